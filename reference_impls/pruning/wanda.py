"""Wanda: "A Simple and Effective Pruning Approach for Large Language Models" (Sun, Liu, Bair,
Kolter; arXiv 2306.11695).

Implemented: the score S_ij = |W_ij| · ‖X_j‖₂ (eq. 1 of the paper) compared within each output row
(the paper's per-output comparison group), unstructured and N:M; no weight update. Input norms come
from calibration activations captured layer by layer, each layer seeing the outputs of the already
pruned layers before it, as in the official code.
Not implemented: the "Wanda variant" (per-row cumulative-score threshold) of the repository.
Fidelity: exact.
"""

from __future__ import annotations

import torch

from reference_impls.common.pruning import select_mask


def wanda_score(weight: torch.Tensor, input_norm: torch.Tensor) -> torch.Tensor:
    """|W| · ‖X_j‖₂ broadcast over rows; `input_norm` has shape (in,)."""
    if input_norm.shape != (weight.shape[1],):
        raise ValueError(f"input_norm must have shape ({weight.shape[1]},), got {tuple(input_norm.shape)}")
    return weight.detach().float().abs() * input_norm.float().reshape(1, -1)  # (out, in)


def wanda_mask(weight, input_norm, *, sparsity=0.5, prune_n=0, prune_m=0) -> torch.Tensor:
    return select_mask(wanda_score(weight, input_norm), sparsity, prune_n, prune_m, per_row=True)


def wanda_prune(
    weight: torch.Tensor,
    input_norm: torch.Tensor,
    *,
    sparsity: float = 0.5,
    prune_n: int = 0,
    prune_m: int = 0,
) -> torch.Tensor:
    """Return a copy of `weight` (out, in) with the lowest |W|·‖X‖ entries of each row set to zero."""
    pruned = wanda_mask(weight, input_norm, sparsity=sparsity, prune_n=prune_n, prune_m=prune_m)
    return weight.masked_fill(pruned, 0)


# ---------------------------------------------------------------- model-level entry
from reference_impls.common.pruning import SPARSITY_OPTIONS, pruned_summary  # noqa: E402
from reference_impls.common.registry import register  # noqa: E402


@register(
    "wanda",
    family="pruning",
    papers=["wanda"],
    bench=[{"sparsity": 0.5}, {"prune_n": 2, "prune_m": 4}, {"sparsity": 0.7}],
    fidelity="exact",
    summary="Wanda: prune by |W|·‖X‖ within each output row, no weight update",
    options=SPARSITY_OPTIONS,
)
def run_wanda(ctx, *, sparsity: float, prune_n: int, prune_m: int) -> dict:
    pruned, formats = {}, {}

    def process(block):
        for name in block.linears:
            new = wanda_prune(
                block.weight(name),
                block.stats[name].input_norm,
                sparsity=sparsity,
                prune_n=prune_n,
                prune_m=prune_m,
            )
            block.set_weight(name, new)
            full = f"{block.name}.{name}"
            pruned[full] = new
            formats[full] = ctx.ledger.add_sparse(full, new, prune_n=prune_n, prune_m=prune_m)

    ctx.walk(process, stats=("input_norm",))
    return pruned_summary(ctx, pruned, formats)
