"""Measured forward latency, for comparing a structurally pruned model with its dense original.

Median wall time of a full forward pass over one fixed batch of token ids, after warm-up runs, on
whatever device and thread count the process has (the run record's `env` states them). Structured
pruning makes matrices physically smaller, so the speed-up is real on any device; unstructured
sparsity stored in dense tensors gives none, which is why only the structured entries report it.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn


@torch.no_grad()
def forward_latency_ms(
    model: nn.Module, *, seq_len: int = 256, batch: int = 1, repeats: int = 7, warmup: int = 2
) -> float:
    device = next(model.parameters()).device
    vocab = model.get_input_embeddings().num_embeddings
    seq_len = min(seq_len, getattr(model.config, "max_position_embeddings", seq_len))
    ids = torch.randint(0, vocab, (batch, seq_len), generator=torch.Generator().manual_seed(0)).to(device)
    was_training = model.training
    model.eval()
    times = []
    for i in range(warmup + repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        model(input_ids=ids, use_cache=False)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append((time.perf_counter() - t0) * 1000)
    model.train(was_training)
    return statistics.median(times)


def latency_metrics(dense_ms: float, pruned_ms: float) -> dict:
    return {
        "latency_ms_dense": round(dense_ms, 3),
        "latency_ms": round(pruned_ms, 3),
        "speedup": dense_ms / pruned_ms,
    }
