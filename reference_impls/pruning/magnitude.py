"""Magnitude pruning: the baseline every LLM pruning paper compares against, and the one-shot
pruning studied in "The Emergence of Essential Sparsity in Large Pre-trained Models: The Weights
that Matter" (Jaiswal et al., NeurIPS 2023, arXiv 2306.03805).

Zeroes the weights of smallest absolute value. `scope="layer"` uses one threshold per matrix (as the
SparseGPT and Wanda repositories do for this baseline); `scope="model"` uses one threshold over all
block linears together, the global one-shot magnitude pruning of the essential-sparsity paper's code.
N:M pruning keeps the largest `M - N` of every `M` consecutive inputs of a row. No calibration data,
no weight update.

Fidelity for the essential-sparsity record: simplified. The pruning step is the paper's; the paper's
downstream finetuning of the pruned checkpoints (GLUE/SQuAD for BERT, vision tasks) and its
sparsity-emergence study during pretraining are left out — here the pruned model is evaluated as is.
"""

from __future__ import annotations

import torch

from reference_impls.common.pruning import select_mask


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


def model_magnitude_masks(weights: dict[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """Masks (True = pruned) for one |W| threshold over all matrices together: exactly
    `int(total * sparsity)` weights are pruned, ties broken by position as in `common.pruning.global_mask`."""
    names = list(weights)
    flat = torch.cat([weights[n].detach().float().abs().flatten() for n in names])
    pruned = select_mask(flat[None, :], sparsity, 0, 0, per_row=False)[0]
    out, start = {}, 0
    for n in names:
        size = weights[n].numel()
        out[n] = pruned[start:start + size].view_as(weights[n])
        start += size
    return out


# ---------------------------------------------------------------- model-level entry
from reference_impls.common.adapters import get_weight  # noqa: E402
from reference_impls.common.layerwise import block_linears  # noqa: E402
from reference_impls.common.pruning import SPARSITY_OPTIONS, pruned_summary  # noqa: E402
from reference_impls.common.registry import Option, register  # noqa: E402

SCOPES = ("layer", "model")


@register(
    "magnitude",
    family="pruning",
    papers=["essential-sparsity"],
    bench=[
        {"sparsity": 0.5},
        {"prune_n": 2, "prune_m": 4},
        {"sparsity": 0.7},
        {"sparsity": 0.5, "scope": "model"},
    ],
    fidelity="simplified",
    summary="One-shot magnitude pruning: one |W| threshold per matrix or per model, or N:M (no finetuning)",
    options={**SPARSITY_OPTIONS,
             "scope": Option("layer",
                             "unstructured threshold per matrix (layer) or over all block linears (model)",
                             choices=SCOPES)},
)
def run_magnitude(ctx, *, sparsity: float, prune_n: int, prune_m: int, scope: str) -> dict:
    pruned, formats = {}, {}
    model_scope = scope == "model" and not prune_n
    if model_scope:  # one threshold needs every weight before any is pruned
        masks = model_magnitude_masks(
            {name: get_weight(m) for name, m in block_linears(ctx.model, ctx.adapter)}, sparsity
        )

    def fn(name: str, w: torch.Tensor) -> torch.Tensor:
        if model_scope:
            new = w.masked_fill(masks[name].to(w.device), 0)
        else:
            new = magnitude_prune(w, sparsity=sparsity, prune_n=prune_n, prune_m=prune_m)
        pruned[name] = new
        formats[name] = ctx.ledger.add_sparse(name, new, prune_n=prune_n, prune_m=prune_m)
        return new

    ctx.map_linears(fn)
    out = pruned_summary(ctx, pruned, formats)
    if model_scope:
        # Global thresholds prune matrices unevenly; the spread is the point of the comparison.
        per = [float((w == 0).float().mean()) for w in pruned.values()]
        out.update(min_layer_sparsity=min(per), max_layer_sparsity=max(per))
    return out
