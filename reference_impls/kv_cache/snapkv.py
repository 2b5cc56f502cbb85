"""SnapKV: "SnapKV: LLM Knows What You are Looking for Before Generation" (Li, Huang, Yang, Venkitesh,
Locatelli, Ye, Cai, Lewis, Chen; arXiv 2404.14469, NeurIPS 2024); catalog record `snapkv`.

The queries at the end of a prompt (the "observation window") already attend to the prefix positions
that generation will need. SnapKV lets them vote, smooths the votes so that neighbouring positions are
kept together, and compresses the prompt's cache to the winners plus the window itself.

Implemented (fidelity: exact for the prefill compression): `snapkv_keep`, the selection of the official
`SnapKVCluster.update_kv` (FasterDecoding/SnapKV, `snapkv_utils.py`): votes = the sum over the last
`window` query rows of their softmax attention to the prefix keys [0, T − window); `avg_pool1d` with
stride 1, zero padding kernel_size // 2 and divisor always kernel_size (PyTorch's count_include_pad);
the top budget − window prefix positions plus the whole window; the prompt is left alone when it is
shorter than the budget. As in the official code, compression happens once, on the prompt; the cache
then grows by one position per generated token (`kv_bytes_peak` reports that honestly). The query
heads of a GQA group are averaged before voting, as kvpress's SnapKVPress does (the official code's
answer to GQA, FasterDecoding/SnapKV issue 22); pooling and top-k are unchanged by the group size.

`--decode-evict true` (not in the paper) also bounds the cache during decoding: each layer keeps the
attention rows of its last `window` queries (rows of earlier steps are zero on keys added after them,
as causal attention is) and, whenever the cache exceeds the budget, re-runs the same vote, pooling and
top-k on the current cache, so the window is always the most recent `window` tokens.
Not implemented: max pooling (an option of the official code, avg pooling is its default), the
LongBench prompt formatting.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from reference_impls.common.generation import KVPolicy, group_mean, measure_on_heldout
from reference_impls.common.registry import Option, register


def snapkv_votes(window_attn: torch.Tensor, *, kernel_size: int = 5) -> torch.Tensor:
    """window_attn (batch, heads, window, P), the window's attention to the P prefix keys → pooled votes
    (batch, heads, P): summed over the window, then averaged over kernel_size neighbours (zero-padded)."""
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
    b, h, _, prefix = window_attn.shape
    votes = window_attn.sum(-2).reshape(b * h, 1, prefix)  # avg_pool1d wants (N, C, L)
    pooled = F.avg_pool1d(votes, kernel_size, stride=1, padding=kernel_size // 2, count_include_pad=True)
    return pooled.reshape(b, h, prefix)


def snapkv_keep_votes(votes: torch.Tensor, *, budget: int, window: int) -> torch.Tensor:
    """Pooled votes (batch, heads, P) of the prefix → kept positions (batch, heads, budget) of a cache of
    P + window: the top budget − window prefix positions, sorted, then the window."""
    b, h, prefix = votes.shape
    top = votes.topk(budget - window, dim=-1).indices.sort(-1).values  # (b, h, budget − window)
    win = torch.arange(prefix, prefix + window, device=votes.device).expand(b, h, window)
    return torch.cat([top, win], -1)


def snapkv_keep(attn_weights: torch.Tensor, *, budget: int, window: int = 32,
                kernel_size: int = 5) -> torch.Tensor:
    """attn_weights (batch, heads, q, T) of a prompt (q ≥ window rows, the last ones the window's) →
    kept positions (batch, heads, budget), sorted; every position when T < budget."""
    if not 0 <= window <= budget:  # budget = window keeps the window only (PyramidKV's top layers can)
        raise ValueError(f"need 0 ≤ window ≤ budget, got window {window}, budget {budget}")
    b, h, _, seq = attn_weights.shape
    if seq < budget:
        return torch.arange(seq, device=attn_weights.device).expand(b, h, seq).clone()
    votes = snapkv_votes(attn_weights[..., -window:, : seq - window], kernel_size=kernel_size)
    return snapkv_keep_votes(votes, budget=budget, window=window)


class SnapKVPolicy(KVPolicy):
    """Compress the prompt by the observation window's votes; optionally keep doing it while decoding."""

    needs_attention = True

    def __init__(self, *, budget: int, window: int = 32, kernel_size: int = 5,
                 decode_evict: bool = False) -> None:
        self.budget, self.window, self.kernel_size = budget, window, kernel_size
        self.decode_evict = decode_evict
        self.rows: dict[int, torch.Tensor] = {}  # layer → (batch, kv_heads, ≤ window, n_held) recent rows

    def layer_budget(self, layer_idx: int, seq_len: int, prefill: bool) -> int:
        """Positions this layer keeps (window included); PyramidKV varies it by layer."""
        return self.budget

    def select(self, layer_idx, keys, values, attn):
        attn = group_mean(attn, keys.shape[1])  # (b, kv_heads, q, n)
        q, n = attn.shape[-2], keys.shape[2]
        prefill = q == n  # the first forward of a generation
        if self.decode_evict:
            self._remember(layer_idx, attn, prefill)
        elif not prefill:
            return None  # the official SnapKV compresses the prompt only
        budget = self.layer_budget(layer_idx, n, prefill)
        if n <= budget:  # a prompt of exactly `budget` keys keeps them all in the official code too
            return None
        rows = attn if prefill else self.rows[layer_idx]
        keep = self._keep(rows, budget)
        if self.decode_evict:
            self.rows[layer_idx] = self.rows[layer_idx].gather(
                -1, keep.unsqueeze(-2).expand(-1, -1, self.rows[layer_idx].shape[-2], -1))
        return keep

    def _keep(self, rows: torch.Tensor, budget: int) -> torch.Tensor:
        n = rows.shape[-1]
        votes = snapkv_votes(rows[..., -self.window :, : n - self.window], kernel_size=self.kernel_size)
        return snapkv_keep_votes(votes, budget=budget, window=self.window)

    def _remember(self, layer_idx: int, attn: torch.Tensor, prefill: bool) -> None:
        """Keep the last `window` attention rows over the current cache; older rows get zeros on the new
        keys (a query never attends to keys after it)."""
        if prefill:
            self.rows[layer_idx] = attn[..., -self.window :, :]
            return
        old = F.pad(self.rows[layer_idx], (0, attn.shape[-1] - self.rows[layer_idx].shape[-1]))
        self.rows[layer_idx] = torch.cat([old, attn], -2)[..., -self.window :, :]


OPTIONS = {
    "budget": Option(64, "cache positions kept per head after compression, window included"),
    "window": Option(32, "observation window: the last prompt queries that vote (kept whole)"),
    "kernel_size": Option(5, "average-pooling width over the votes (odd)"),
    "decode_evict": Option(False, "also evict during decoding (not in the paper: the official code "
                                  "compresses the prompt only, so the cache grows while generating)"),
    "windows": Option(4, "held-out windows measured (batch)"),
    "prefill": Option(128, "prompt tokens before generation / teacher forcing"),
    "new_tokens": Option(128, "tokens generated per prompt"),
}


@register(
    "snapkv", family="kv_cache", papers=["snapkv"], fidelity="exact",
    summary="Observation-window votes, pooled, pick the prompt positions to keep (prefill compression)",
    options=OPTIONS,
    bench=[{"budget": 64}, {"budget": 128}, {"budget": 64, "decode_evict": True},
           {"budget": 128, "decode_evict": True}],
    bench_models=("causal",),
)
def run_snapkv(ctx, *, budget, window, kernel_size, decode_evict, windows, prefill, new_tokens) -> dict:
    if not 0 <= window < budget:
        raise ValueError(f"need 0 ≤ --window < --budget, got {window}, {budget}")
    policy = SnapKVPolicy(budget=budget, window=window, kernel_size=kernel_size, decode_evict=decode_evict)
    return measure_on_heldout(ctx, policy, windows=windows, prefill=prefill, new_tokens=new_tokens)
