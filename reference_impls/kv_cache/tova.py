"""TOVA: "Transformers are Multi-State RNNs" (Oren, Hassid, Yarden, Adi, Schwartz; arXiv 2401.06104,
EMNLP 2024); catalog record `tova`.

A decoder with a bounded cache is a multi-state RNN. TOVA (Token Omission Via Attention) is its
training-free compression policy: whenever the cache exceeds its size, keep the keys the current query
attends to most and drop the rest.

Implemented (fidelity: exact for the cache policy): `tova_keep`, the rule of the official `TOVACache.reduce`
(schwartz-lab-NLP/TOVA, `src/tova_cache.py`): after every forward, if the layer holds more than `budget`
keys, the attention of the **last** query row is averaged over **all** query heads and the top `budget`
keys by that mean are kept, the same positions for every KV head of the layer (the paper found one
shared choice per layer better than per-head ones). The last token competes like any other (kvpress's
TOVAPress always keeps it; the official code does not). The prompt is compressed the same way, by its
last query's attention, so the cache never exceeds the budget. Kept keys keep their text positions.
Not implemented: the paper's analyses (which tokens survive), models other than those with the project's
attention hook.
"""

from __future__ import annotations

import torch

from reference_impls.common.generation import KVPolicy, measure_on_heldout
from reference_impls.common.registry import Option, register


def tova_keep(attn_weights: torch.Tensor, *, budget: int) -> torch.Tensor:
    """attn_weights (batch, heads, q, T) → kept positions (batch, 1, min(T, budget)), sorted, shared by
    every head: the top `budget` of the last query row's attention averaged over heads."""
    if budget < 1:
        raise ValueError(f"budget must be ≥ 1, got {budget}")
    b, _, _, seq = attn_weights.shape
    if seq <= budget:
        return torch.arange(seq, device=attn_weights.device).expand(b, 1, seq).clone()
    score = attn_weights[:, :, -1, :].mean(1)  # (b, T): the current query, averaged over heads
    return score.topk(budget, dim=-1).indices.sort(-1).values.unsqueeze(1)  # (b, 1, budget)


class TOVAPolicy(KVPolicy):
    """The current query's head-averaged attention decides, after every step."""

    needs_attention = True

    def __init__(self, *, budget: int) -> None:
        self.budget = budget

    def select(self, layer_idx, keys, values, attn):
        if keys.shape[2] <= self.budget:
            return None
        return tova_keep(attn, budget=self.budget).expand(-1, keys.shape[1], -1)


@register(
    "tova", family="kv_cache", papers=["tova"], fidelity="exact",
    summary="Keep the keys the current query attends to most (head-averaged), evict the rest each step",
    options={
        "budget": Option(64, "cache positions kept per head"),
        "windows": Option(4, "held-out windows measured (batch)"),
        "prefill": Option(128, "prompt tokens before generation / teacher forcing"),
        "new_tokens": Option(128, "tokens generated per prompt"),
    },
    bench=[{"budget": 64}, {"budget": 128}],
    bench_models=("causal",),
)
def run_tova(ctx, *, budget, windows, prefill, new_tokens) -> dict:
    policy = TOVAPolicy(budget=budget)
    return measure_on_heldout(ctx, policy, windows=windows, prefill=prefill, new_tokens=new_tokens)
