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
