"""OWL: "Outlier Weighed Layerwise Sparsity (OWL): A Missing Secret Sauce for Pruning LLMs to High
Sparsity" (Yin, Wu, Zhang, Hsieh, Wang, Jaiswal, Pechenizkiy, Liang, Mocanu, Wang, Liu;
arXiv 2310.05175).

Implemented: the layer outlier distribution D_l = the fraction of a decoder layer's Wanda scores
|W_ij|·‖X_j‖ (all its linear layers together) above M times their mean (eq. 4 of the paper), computed
on the dense model; per-layer sparsities S_l = S - (D̃_l - mean(D̃)) with D̃ = D rescaled to [0, 2λ]
(the official code's `(D - min)/(max - min)·2λ`), so layers with more outliers are pruned less, the
mean sparsity stays S and every S_l lies within S ± λ; then Wanda (or SparseGPT) at S_l in layer l.
Defaults M = 5, λ = 0.08: the repository's settings for 70% unstructured sparsity.
Not implemented: the N:M variant that moves whole N levels between layers.
Fidelity: exact.
"""

from __future__ import annotations

import torch


def outlier_ratio(scores: list[torch.Tensor], *, m: float = 5.0) -> float:
    """Fraction of a layer's scores above `m` times their mean."""
    flat = torch.cat([s.detach().float().flatten() for s in scores])
    return float((flat > m * flat.mean()).float().mean())


def owl_sparsities(ratios: list[float], sparsity: float, *, lam: float = 0.08) -> list[float]:
    """Per-layer sparsities from the per-layer outlier ratios D_l."""
    D = torch.tensor(ratios, dtype=torch.float64)
    spread = D.max() - D.min()
    if spread == 0:  # no layer stands out: uniform
        return [sparsity] * len(ratios)
    scaled = (D - D.min()) / spread * (2 * lam)
    return (sparsity - (scaled - scaled.mean())).clamp(0.0, 0.99).tolist()


# ---------------------------------------------------------------- model-level entry
from reference_impls.common.pruning import pruned_summary  # noqa: E402
from reference_impls.common.registry import Option, register  # noqa: E402
from reference_impls.pruning.sparsegpt import sparsegpt_prune  # noqa: E402
from reference_impls.pruning.wanda import wanda_prune, wanda_score  # noqa: E402


@register(
    "owl",
    family="pruning",
    papers=["owl"],
    bench=[{"sparsity": 0.7}, {"sparsity": 0.7, "base": "sparsegpt"}],
    fidelity="exact",
    summary="OWL: per-layer sparsity from the layer's share of outlier Wanda scores, then Wanda or SparseGPT",
    options={
        "sparsity": Option(0.7, "target mean sparsity"),
        "m": Option(5.0, "outlier threshold: scores above m × the layer mean"),
        "lam": Option(0.08, "λ: per-layer sparsities stay within sparsity ± λ"),
        "base": Option("wanda", "pruner applied at the per-layer sparsities", choices=("wanda", "sparsegpt")),
    },
)
def run_owl(ctx, *, sparsity, m, lam, base) -> dict:
    ratios: list[float] = []

    def measure(block):  # on the dense model, as the official code does
        ratios.append(
            outlier_ratio(
                [wanda_score(block.weight(n), block.stats[n].input_norm) for n in block.linears], m=m
            )
        )

    ctx.walk(measure, stats=("input_norm",))
    layer_sparsity = owl_sparsities(ratios, sparsity, lam=lam)
    pruned, formats = {}, {}

    def process(block):
        s = layer_sparsity[block.index]
        for name in block.linears:
            W = block.weight(name)
            st = block.stats[name]
            new = (
                wanda_prune(W, st.input_norm, sparsity=s)
                if base == "wanda"
                else sparsegpt_prune(W, st.hessian, sparsity=s)
            )
            block.set_weight(name, new)
            full = f"{block.name}.{name}"
            pruned[full] = new
            formats[full] = ctx.ledger.add_sparse(full, new)

    ctx.walk(process, stats=("input_norm",) if base == "wanda" else ("hessian",))
    out = pruned_summary(ctx, pruned, formats)
    out.update(
        layer_sparsity=[round(x, 4) for x in layer_sparsity], outlier_ratios=[round(r, 6) for r in ratios]
    )
    return out
