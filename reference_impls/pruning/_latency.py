"""Measured forward latency of a structurally pruned model against its dense original.

A full forward pass over one fixed batch of token ids (4 × 256 by default: on a small model a single
sequence takes ~30 ms, where timer and scheduler noise are a visible fraction), timed for the dense copy
and the pruned model in alternation (so both see the same load from other processes sharing the
machine), best of n after warm-up runs, on whatever device and thread count the process has (the run
record's `env` states them). Structured pruning makes matrices physically smaller, so the speed-up is
real on any device; unstructured sparsity stored in dense tensors gives none, which is why only the
structured entries report latency.
"""

from __future__ import annotations

import copy
import time

import torch
from torch import nn

from reference_impls.pruning._structure import count_params

MAX_COPY_PARAMS = 2_000_000_000  # above this, keep no dense copy: time the dense model up front


def _ids(model: nn.Module, seq_len: int, batch: int) -> torch.Tensor:
    device = next(model.parameters()).device
    vocab = model.get_input_embeddings().num_embeddings
    seq_len = min(seq_len, getattr(model.config, "max_position_embeddings", seq_len))
    return torch.randint(0, vocab, (batch, seq_len), generator=torch.Generator().manual_seed(0)).to(device)


@torch.no_grad()
def _once(model: nn.Module, ids: torch.Tensor) -> float:
    sync = ids.device.type == "cuda"
    if sync:
        torch.cuda.synchronize(ids.device)
    t0 = time.perf_counter()
    model(input_ids=ids, use_cache=False)
    if sync:
        torch.cuda.synchronize(ids.device)
    return (time.perf_counter() - t0) * 1000


def forward_latency_ms(
    *models: nn.Module, seq_len: int = 256, batch: int = 4, repeats: int = 20, warmup: int = 3
):
    """Best-of-`repeats` forward time in ms of each model, runs interleaved across the models."""
    ids = _ids(models[0], seq_len, batch)
    for m in models:
        m.eval()
    best = [float("inf")] * len(models)
    for i in range(warmup + repeats):
        for k, m in enumerate(models):
            t = _once(m, ids)
            if i >= warmup:
                best[k] = min(best[k], t)
    return best


class LatencyProbe:
    """Keep what is needed to time the dense model against its pruned self after pruning."""

    def __init__(self, model: nn.Module) -> None:
        if count_params(model) <= MAX_COPY_PARAMS:
            self.dense, self.dense_ms = copy.deepcopy(model), None
        else:
            self.dense, (self.dense_ms,) = None, forward_latency_ms(model)

    def metrics(self, pruned: nn.Module) -> dict:
        if self.dense is not None:
            dense_ms, pruned_ms = forward_latency_ms(self.dense, pruned)
            self.dense = None
        else:
            dense_ms, (pruned_ms,) = self.dense_ms, forward_latency_ms(pruned)
        return {
            "latency_ms_dense": round(dense_ms, 3),
            "latency_ms": round(pruned_ms, 3),
            "speedup": dense_ms / pruned_ms,
        }
