"""StreamingLLM: "Efficient Streaming Language Models with Attention Sinks" (Xiao, Tian, Chen, Han,
Lewis; arXiv 2309.17453, ICLR 2024); catalog record `streamingllm`.

The first few tokens take a large share of attention whatever they say ("attention sinks"); a window
cache that evicts them collapses. StreamingLLM keeps the `n_sink` first positions plus the `n_recent`
most recent ones and evicts everything between, so the cache never exceeds n_sink + n_recent.

Implemented (fidelity: exact for the cache policy): `streaming_keep`, the kept set of the official
`StartRecentKVCache` (mit-han-lab/streaming-llm: `start_size`, `recent_size`; every position while
seq_len ≤ start + recent), applied after every forward, prefill included; the official pos-shift
(positions assigned inside the cache rather than in the text) through the generation hook's
`position_shift`, which re-rotates the kept keys (equivalent, since RoPE scores depend only on relative
positions). `--position-shift false` keeps text positions instead (what kvpress-style eviction does).
Not implemented: pre-training with a dedicated learnable sink token (the paper's section 3.3).
"""

from __future__ import annotations

import torch

from reference_impls.common.generation import KVPolicy, measure_on_heldout
from reference_impls.common.registry import Option, register


def streaming_keep(seq_len: int, *, n_sink: int = 4, n_recent: int) -> torch.Tensor:
    """Kept positions, sorted: all of them while seq_len ≤ n_sink + n_recent, else the first n_sink and
    the last n_recent."""
    if n_sink < 0 or n_recent < 0:
        raise ValueError(f"n_sink and n_recent must be non-negative, got {n_sink}, {n_recent}")
    if seq_len <= n_sink + n_recent:
        return torch.arange(seq_len)
    return torch.cat([torch.arange(n_sink), torch.arange(seq_len - n_recent, seq_len)])


class StreamingPolicy(KVPolicy):
    """Sinks + recent window for every layer and head alike."""

    def __init__(self, *, n_sink: int, n_recent: int, position_shift: bool = True) -> None:
        self.n_sink, self.n_recent, self.position_shift = n_sink, n_recent, position_shift

    def select(self, layer_idx, keys, values, attn):
        b, h, seq, _ = keys.shape
        if seq <= self.n_sink + self.n_recent:
            return None
        keep = streaming_keep(seq, n_sink=self.n_sink, n_recent=self.n_recent).to(keys.device)
        return keep.expand(b, h, -1)


@register(
    "streaming-llm", family="kv_cache", papers=["streamingllm"], fidelity="exact",
    summary="Attention sinks + recent window: a KV cache of fixed size for unbounded generation",
    options={
        "budget": Option(64, "cache positions kept per head, sinks included"),
        "n_sink": Option(4, "attention-sink positions always kept (the paper's default: 4)"),
        "position_shift": Option(True, "positions inside the cache, as the official code "
                                          "(false: text positions)"),
        "windows": Option(4, "held-out windows measured (batch)"),
        "prefill": Option(128, "prompt tokens before generation / teacher forcing"),
        "new_tokens": Option(128, "tokens generated per prompt"),
    },
    bench=[{"budget": 64}, {"budget": 128}, {"budget": 64, "position_shift": False}],
    bench_models=("causal",),
)
def run_streaming_llm(ctx, *, budget, n_sink, position_shift, windows, prefill, new_tokens) -> dict:
    if not 0 <= n_sink < budget:
        raise ValueError(f"--n-sink must be in 0..budget-1 ({budget - 1}), got {n_sink}")
    policy = StreamingPolicy(n_sink=n_sink, n_recent=budget - n_sink, position_shift=position_shift)
    return measure_on_heldout(ctx, policy, windows=windows, prefill=prefill, new_tokens=new_tokens)
