"""SVD-LLM: "SVD-LLM: Truncation-aware Singular Value Decomposition for Large Language Model
Compression" (Wang, Zheng, Zhang, Zhang; arXiv 2403.07378, ICLR 2025); catalog record `svd-llm`.

Plain SVD truncates the singular values of W, which says nothing about how much each one costs on the
layer's real inputs X. SVD-LLM whitens the inputs first: with the Gram matrix X Xᵀ = L Lᵀ (Cholesky),
the singular values σ_i of W·L are exactly what truncating them costs, ‖(W − W′)X‖²_F = Σ_{i>k} σ_i²
(its Theorem 3.2), so the truncation is optimal for the layer's output on the calibration data.

Implemented (fidelity: simplified): truncation-aware data whitening as the official code does it
(AIoT-MLSys-Lab/SVD-LLM, `profle_svdllm` + `whitening`): Gram Σ x xᵀ, lower Cholesky factor in float64
with no damping, except when Cholesky fails: then (−λ_min + 1e-6)·I is added and it is factored
again; exact SVD of W·L, keep k = int(m·n·r / (m + n)) (DESIGN §6 `--ratio`), W′ = U_k Σ_k V_kᵀ L⁻¹.
Calibration runs block by block on the already compressed prefix (`layerwise.walk_blocks`). On those
inputs the official `whitening_local_update` (a least-squares re-fit of U with V′ = V_kᵀL⁻¹ fixed)
changes nothing: with G = X Xᵀ, argmin_U ‖W X − U V′ X‖ = W G V′ᵀ (V′ G V′ᵀ)⁻¹ = U_k Σ_k, the factor
whitening already gives, so the sequential walk is that update in closed form.
Not implemented: the paper's LoRA-based "sequential low-rank approximation" fine-tuning of U then V
(utils/LoRA.py), and SVD-LLM v2's heterogeneous rank allocation; hence `simplified`.
"""

from __future__ import annotations

import torch

from reference_impls.common.registry import Option, register
from reference_impls.common.storage import rank_for_ratio


# ---------------------------------------------------------------- pure core
def whitening_factor(gram: torch.Tensor) -> torch.Tensor:
    """Lower Cholesky factor L (float64) of the Gram matrix, gram = L Lᵀ; the official fallback
    (shift by −λ_min + 1e-6) only when the factorisation fails."""
    G = gram.double()  # (in, in)
    L, info = torch.linalg.cholesky_ex(G)
    if info.item() != 0:
        lam_min = torch.linalg.eigvalsh(G)[0]
        eye = torch.eye(G.shape[0], dtype=G.dtype, device=G.device)
        L = torch.linalg.cholesky(G + (-lam_min + 1e-6) * eye)
    return L


def svd_llm_compress(weight: torch.Tensor, gram: torch.Tensor, *, rank: int) -> torch.Tensor:
    """W′ = U_k Σ_k V_kᵀ L⁻¹ with U Σ Vᵀ = SVD(W·L), gram = Σ x xᵀ = L Lᵀ (any positive scale)."""
    W = weight.double()  # (out, in)
    L = whitening_factor(gram)  # (in, in), lower
    U, S, Vh = torch.linalg.svd(W @ L, full_matrices=False)  # (out, r) (r,) (r, in)
    V_inv = torch.linalg.solve_triangular(L, Vh[:rank], upper=False, left=False)  # V_kᵀ L⁻¹, (k, in)
    return ((U[:, :rank] * S[:rank]) @ V_inv).to(weight.dtype)


# ---------------------------------------------------------------- model-level entry
@register(
    "svd-llm", family="low_rank", papers=["svd-llm"], fidelity="simplified",
    summary="Truncation-aware whitening: SVD of W·L (Cholesky of the input Gram), truncate, undo L",
    options={"ratio": Option(0.8, "fraction of each linear's parameters the factors keep (0-1]")},
    bench=[{"ratio": r} for r in (0.8, 0.6, 0.4)],
)
def run_svd_llm(ctx, *, ratio: float) -> dict:
    rank_for_ratio(1, 1, ratio)  # validates --ratio before calibration
    kept = 0

    def process(block) -> None:
        nonlocal kept
        for name in block.linears:
            w = block.weight(name)
            m, n = w.shape
            k = rank_for_ratio(m, n, ratio)
            block.set_weight(name, svd_llm_compress(w, block.stats[name].hessian, rank=k))
            ctx.ledger.add_low_rank(f"{block.name}.{name}", m, n, rank=k)
            kept += k * (m + n)

    ctx.walk(process, stats=("hessian",))
    return {"factor_params": kept, "ratio_kept": kept / ctx.ledger.n_weights}
