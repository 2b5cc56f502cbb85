"""Magnitude pruning: the baseline every LLM pruning paper compares against.

Zeroes the weights of smallest absolute value. Unstructured pruning uses one threshold over the
whole matrix (as the SparseGPT and Wanda repositories do for this baseline); N:M pruning keeps the
largest `M - N` of every `M` consecutive inputs of a row. No calibration data, no weight update.
Fidelity: exact (up to the exact-count tie rule in `masks`).
"""

from __future__ import annotations

import torch

from reference_impls.pruning.masks import select_mask


def magnitude_mask(
    weight: torch.Tensor, *, sparsity: float = 0.5, prune_n: int = 0, prune_m: int = 0
) -> torch.Tensor:
    """Boolean mask, True where the weight is pruned."""
    return select_mask(weight.detach().float().abs(), sparsity, prune_n, prune_m, per_row=False)


def magnitude_prune(
    weight: torch.Tensor, *, sparsity: float = 0.5, prune_n: int = 0, prune_m: int = 0
) -> torch.Tensor:
    """Return a copy of `weight` (out, in) with the smallest-magnitude entries set to zero."""
    pruned = magnitude_mask(weight, sparsity=sparsity, prune_n=prune_n, prune_m=prune_m)
    return weight.masked_fill(pruned, 0)


# ---------------------------------------------------------------- model-level entry
from reference_impls.common.registry import Option, register  # noqa: E402
from reference_impls.pruning.storage import record_sparse  # noqa: E402

SPARSITY_OPTIONS = {
    "sparsity": Option(0.5, "fraction of weights set to zero (ignored for N:M)"),
    "prune_n": Option(0, "N of an N:M pattern: zeros per group (0 = unstructured)"),
    "prune_m": Option(0, "M of an N:M pattern: group size"),
}


def pruned_summary(ctx, pruned: dict[str, torch.Tensor], formats: dict[str, str]) -> dict:
    """Method metrics shared by the unstructured pruners: achieved sparsity and storage formats."""
    zeros = sum(int((w == 0).sum()) for w in pruned.values())
    total = sum(w.numel() for w in pruned.values())
    counts: dict[str, int] = {}
    for f in formats.values():
        counts[f] = counts.get(f, 0) + 1
    return {"sparsity": zeros / total, "storage_formats": counts}


@register(
    "magnitude",
    family="pruning",
    papers=[],
    bench=[{"sparsity": 0.5}, {"prune_n": 2, "prune_m": 4}, {"sparsity": 0.7}],
    fidelity="exact",
    summary="Magnitude pruning baseline: one |W| threshold per matrix, or N:M",
    options=SPARSITY_OPTIONS,
)
def run_magnitude(ctx, *, sparsity: float, prune_n: int, prune_m: int) -> dict:
    pruned, formats = {}, {}

    def fn(name: str, w: torch.Tensor) -> torch.Tensor:
        new = magnitude_prune(w, sparsity=sparsity, prune_n=prune_n, prune_m=prune_m)
        pruned[name] = new
        formats[name] = record_sparse(ctx.ledger, name, new, prune_n=prune_n, prune_m=prune_m)
        return new

    ctx.map_linears(fn)
    return pruned_summary(ctx, pruned, formats)
