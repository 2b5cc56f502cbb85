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
