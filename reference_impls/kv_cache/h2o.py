"""H2O: "H2O: Heavy-Hitter Oracle for Efficient Generative Inference of Large Language Models" (Zhang,
Sheng, Zhou, Chen, Zheng, Cai, Song, Tian, Ré, Barrett, Wang, Chen; arXiv 2306.14048, NeurIPS 2023);
catalog record `h2o`.

A few keys ("heavy hitters") receive most of the attention, summed over the queries that have seen them.
H2O keeps those plus a window of the most recent keys and evicts the rest, greedily, after every step.

Implemented (fidelity: exact for the cache policy, with GQA handled as stated below): `h2o_keep`, the
kept set of the official evicting cache (FMInference/H2O, `H2OKVCache_LayerWise` of
`h2o_hf/utils_real_drop`): a key's score is the **sum** of its softmax attention over all query rows;
the last `n_recent` keys are set aside first, the top `n_heavy` of the others by score are kept with
them; nothing is evicted while the cache holds at most n_heavy + n_recent keys. As in the official
cache the scores accumulate over the whole generation: the prefill's column sums, then each decoding
step's attention row added, and they are gathered along with the keys they belong to (an evicted key's
score is gone with it; a new key starts from its first row). Eviction runs after the prefill's attention
(the prompt is compressed at once) and after every decoding step, so the cache never exceeds the budget.
Kept keys keep their text positions (as the official code).

GQA (the official code targets models with one KV head per query head): the 4 query heads that share a
KV head are combined by the **mean** of their attention weights before scoring, as kvpress does for
every attention-based press; since all groups have the same size, the mean and the sum give the same
ranking, so this is the only GQA choice that does not change what H2O measures (a key's share of
the attention its KV head serves). Scores are kept per batch item (the official code sums the batch).

Not implemented: the simulated-eviction masks of the paper's accuracy experiments (`h2o_hf/utils_lm_eval`),
FlexGen integration. kvpress's ObservedAttentionPress is a different score (normalised by the number
of queries that saw each key, no recent window) and is not H2O.
"""

from __future__ import annotations

import torch

from reference_impls.common.generation import KVPolicy, group_mean, measure_on_heldout
from reference_impls.common.registry import Option, register


def h2o_keep_scores(scores: torch.Tensor, *, n_heavy: int, n_recent: int) -> torch.Tensor:
    """Kept indices from accumulated scores (batch, heads, T): top `n_heavy` of [0, T − n_recent) by
    score, then the last `n_recent`, sorted; every index when T ≤ n_heavy + n_recent."""
    if n_heavy < 0 or n_recent < 0:
        raise ValueError(f"n_heavy and n_recent must be non-negative, got {n_heavy}, {n_recent}")
    b, h, seq = scores.shape
    if seq <= n_heavy + n_recent:
        return torch.arange(seq, device=scores.device).expand(b, h, seq).clone()
    # the recent window is set aside before top-k, so a recent key never takes a heavy-hitter slot
    heavy = scores[..., : seq - n_recent].topk(n_heavy, dim=-1).indices.sort(-1).values  # (b, h, n_heavy)
    recent = torch.arange(seq - n_recent, seq, device=scores.device).expand(b, h, n_recent)
    return torch.cat([heavy, recent], -1)  # (b, h, n_heavy + n_recent)


def h2o_keep(attn_weights: torch.Tensor, *, n_heavy: int, n_recent: int) -> torch.Tensor:
    """attn_weights (batch, heads, q, T) → kept positions (batch, heads, n_heavy + n_recent): a key's
    score is the sum of its attention over all q query rows."""
    return h2o_keep_scores(attn_weights.sum(-2), n_heavy=n_heavy, n_recent=n_recent)


class H2OPolicy(KVPolicy):
    """Heavy hitters by attention accumulated over the whole generation, plus a recent window."""

    needs_attention = True

    def __init__(self, *, n_heavy: int, n_recent: int) -> None:
        self.n_heavy, self.n_recent = n_heavy, n_recent
        self.scores: dict[int, torch.Tensor] = {}  # layer → (batch, kv_heads, n_held) accumulated attention

    def select(self, layer_idx, keys, values, attn):
        step = group_mean(attn, keys.shape[1]).sum(-2)  # (b, kv_heads, n): this step's column sums
        n_new = attn.shape[-2]
        if n_new == keys.shape[2]:  # the first forward of a generation: start afresh
            acc = step
        else:  # old keys add this step's attention to what they had; new keys start from it
            acc = step.clone()
            acc[..., :-n_new] += self.scores[layer_idx]
        keep = h2o_keep_scores(acc, n_heavy=self.n_heavy, n_recent=self.n_recent)
        self.scores[layer_idx] = acc.gather(-1, keep)
        return None if keep.shape[-1] == keys.shape[2] else keep


@register(
    "h2o", family="kv_cache", papers=["h2o"], fidelity="exact",
    summary="Heavy hitters (largest accumulated attention) + recent window, evicted after every step",
    options={
        "budget": Option(64, "cache positions kept per head: heavy hitters + recent window"),
        "heavy_ratio": Option(0.5, "share of the budget for heavy hitters (the paper: equal halves)"),
        "windows": Option(4, "held-out windows measured (batch)"),
        "prefill": Option(128, "prompt tokens before generation / teacher forcing"),
        "new_tokens": Option(128, "tokens generated per prompt"),
    },
    bench=[{"budget": 64}, {"budget": 128}],
    bench_models=("causal",),
)
def run_h2o(ctx, *, budget, heavy_ratio, windows, prefill, new_tokens) -> dict:
    if budget < 1 or not 0 <= heavy_ratio <= 1:
        raise ValueError(f"need --budget ≥ 1 and --heavy-ratio in [0, 1], got {budget}, {heavy_ratio}")
    n_heavy = round(budget * heavy_ratio)
    policy = H2OPolicy(n_heavy=n_heavy, n_recent=budget - n_heavy)
    metrics = measure_on_heldout(ctx, policy, windows=windows, prefill=prefill, new_tokens=new_tokens)
    return {**metrics, "n_heavy": n_heavy, "n_recent": budget - n_heavy}
