"""Truncated SVD: the baseline every low-rank method of the catalog compares to (no paper of its own;
Eckart-Young: the rank-k truncation is the best rank-k approximation in Frobenius norm).

Implemented (fidelity: exact): W ≈ U_k Σ_k V_kᵀ from an exact SVD (float64), every block linear at the
rank DESIGN §6's `--ratio` gives, k = int(m·n·r / (m + n)); stored as the factors U_k Σ_k (out, k) and
V_kᵀ (k, in) at 16 bits. The model computes with their product (same outputs as two stacked linears).
Not implemented: randomized SVD (an approximation of this).
"""

from __future__ import annotations

import torch

from reference_impls.common.registry import Option, register
from reference_impls.common.storage import rank_for_ratio


# ---------------------------------------------------------------- pure core
def svd_compress(weight: torch.Tensor, *, rank: int) -> torch.Tensor:
    """The rank-`rank` reconstruction U_k Σ_k V_kᵀ of `weight` (out, in), same shape and dtype."""
    U, S, Vh = torch.linalg.svd(weight.double(), full_matrices=False)  # (out, r) (r,) (r, in)
    return ((U[:, :rank] * S[:rank]) @ Vh[:rank]).to(weight.dtype)


# ---------------------------------------------------------------- model-level entry
@register(
    "svd", family="low_rank", papers=[], fidelity="exact",
    summary="Truncated SVD of every block linear at the rank that keeps --ratio of its parameters",
    options={"ratio": Option(0.8, "fraction of each linear's parameters the factors keep (0-1]")},
    bench=[{"ratio": r} for r in (0.8, 0.6, 0.4)],
)
def run_svd(ctx, *, ratio: float) -> dict:
    rank_for_ratio(1, 1, ratio)  # validates --ratio before any work
    kept = 0

    def compress(name: str, w: torch.Tensor) -> torch.Tensor:
        nonlocal kept
        m, n = w.shape
        k = rank_for_ratio(m, n, ratio)
        ctx.ledger.add_low_rank(name, m, n, rank=k)
        kept += k * (m + n)
        return svd_compress(w, rank=k)

    ctx.map_linears(compress)
    return {"factor_params": kept, "ratio_kept": kept / ctx.ledger.n_weights}
