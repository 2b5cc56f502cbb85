"""What the pruners share: mask selection rules, their options, summary metrics and ledger entries.

A mask here is a boolean tensor of the weight's shape, True where the weight is pruned (the
convention of the SparseGPT, Wanda and RIA repositories). Exactly `int(count * sparsity)` entries
are pruned in each comparison group: the official code thresholds with `score <= sorted[k]`, which
prunes one entry too many (and one at 0% sparsity); counting exactly keeps 0% a no-op.
"""

from __future__ import annotations

import torch

from reference_impls.common.layerwise import block_linears
from reference_impls.common.registry import Option


def check_nm(prune_n: int, prune_m: int, in_features: int) -> None:
    if prune_n < 0 or prune_m < 0 or (prune_n == 0) != (prune_m == 0):
        raise ValueError(f"N:M needs 0 < prune_n < prune_m or both 0, got {prune_n}:{prune_m}")
    if prune_n and (prune_n >= prune_m or in_features % prune_m):
        raise ValueError(
            f"{prune_n}:{prune_m} sparsity needs prune_n < prune_m dividing {in_features} inputs"
        )


def check_sparsity(sparsity: float) -> None:
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")


def global_mask(score: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Prune the `sparsity` fraction of entries with the lowest score over the whole matrix.

    A selection, not a sort: the k-th smallest score (`kthvalue`, linear time) is the threshold,
    everything below it is pruned, and ties at it are pruned in flat (row-major) order until k.
    """
    k = int(score.numel() * sparsity)
    flat = score.flatten()
    if k == 0:
        return torch.zeros_like(score, dtype=torch.bool)
    thresh = flat.kthvalue(k).values
    pruned = flat < thresh
    short = k - int(pruned.sum())
    if short:
        pruned[(flat == thresh).nonzero().flatten()[:short]] = True
    return pruned.view_as(score)


def row_mask(score: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Prune the same fraction in every output row (scores compared within a row)."""
    k = int(score.shape[1] * sparsity)
    pruned = torch.zeros_like(score, dtype=torch.bool)
    if k:
        idx = torch.sort(score, dim=1, stable=True).indices[:, :k]  # (out, k)
        pruned.scatter_(1, idx, True)
    return pruned


def nm_mask(score: torch.Tensor, prune_n: int, prune_m: int) -> torch.Tensor:
    """Prune the `prune_n` lowest scores in every group of `prune_m` consecutive inputs of a row."""
    rows, cols = score.shape
    check_nm(prune_n, prune_m, cols)
    groups = score.reshape(rows, cols // prune_m, prune_m)  # (out, in/M, M)
    idx = torch.topk(groups, prune_n, dim=2, largest=False).indices  # (out, in/M, N)
    pruned = torch.zeros_like(groups, dtype=torch.bool).scatter_(2, idx, True)
    return pruned.reshape(rows, cols)


def select_mask(
    score: torch.Tensor, sparsity: float, prune_n: int, prune_m: int, *, per_row: bool
) -> torch.Tensor:
    """N:M when `prune_n` is set, else unstructured per row or over the whole matrix."""
    if prune_n:
        return nm_mask(score, prune_n, prune_m)
    check_sparsity(sparsity)
    return row_mask(score, sparsity) if per_row else global_mask(score, sparsity)


# ---------------------------------------------------------------- model level
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


def dense_linear_sizes(ctx) -> dict[str, int]:
    """Weights per block linear before structured pruning, by full name (see `record_structured`)."""
    return {name: m.weight.numel() for name, m in block_linears(ctx.model, ctx.adapter)}


def record_structured(ctx, dense_sizes: dict[str, int]) -> None:
    """Ledger: each block linear at 16 bits per remaining weight, over its original size."""
    for name, m in block_linears(ctx.model, ctx.adapter):
        ctx.ledger.add(name, dense_sizes.get(name, m.weight.numel()), m.weight.numel() * 16,
                       held=m.weight.numel())
