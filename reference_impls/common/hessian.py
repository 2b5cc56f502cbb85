"""The inverse-Hessian factor of the second-order methods (GPTQ, SparseGPT and what builds on them).

Conventions of the official GPTQ / SparseGPT code (IST-DASLab), shared so every method agrees:
- dead inputs (H[d,d] = 0: the input never fired on calibration data) get H[d,d] = 1, and the caller
  zeroes W[:, d] (their weights cannot matter on that data);
- damping λ = damp · mean(diag H) on the diagonal, relative so that the scale of H is irrelevant;
- H⁻¹ through a Cholesky factorisation, then its upper Cholesky factor U (UᵀU = H⁻¹), whose rows
  drive the column-by-column updates (row q: w_{q:} -= err · U_{q,q:}), and whose diagonal gives the
  OBS saliency w²/[U]_qq².
"""

from __future__ import annotations

import torch


def mark_dead_inputs(H: torch.Tensor) -> torch.Tensor:
    """Set H[d,d] = 1 in place where it is 0; returns the dead-input flags (in,)."""
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    return dead


def add_damping(H: torch.Tensor, damp: float) -> None:
    """H += damp · mean(diag H) · I, in place."""
    H.diagonal().add_(damp * torch.mean(torch.diag(H)))


def inverse_upper_cholesky(H: torch.Tensor) -> torch.Tensor:
    """Upper-triangular U with UᵀU = H⁻¹ (H symmetric positive definite, already damped)."""
    return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)


def inverse_hessian_cholesky(
    hessian: torch.Tensor, *, damp: float = 0.01, dtype: torch.dtype | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """U of the damped H with dead inputs fixed, computed in `dtype` (default: at least float32),
    and the dead-input flags. `hessian` is not modified."""
    H = hessian.detach().to(dtype or torch.promote_types(hessian.dtype, torch.float32)).clone()  # (in, in)
    dead = mark_dead_inputs(H)
    add_damping(H, damp)
    return inverse_upper_cholesky(H), dead


def block_ldl(H: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Block LDL decomposition H = L D Lᵀ (QuIP#'s vector LDLQ): L unit block lower triangular (identity
    `block` × `block` diagonal blocks), D block diagonal, returned as (n/block, block, block).

    From the Cholesky factor H = C Cᵀ: with C_k the diagonal blocks of C, L = C · blockdiag(C_k)⁻¹ and
    D_k = C_k C_kᵀ (the construction of the official quip-sharp `block_LDL`)."""
    n = H.shape[0]
    if n % block:
        raise ValueError(f"block LDL needs the size {n} to be a multiple of the block {block}")
    m = n // block
    C = torch.linalg.cholesky(H)  # (n, n) lower
    Ck = C.reshape(m, block, m, block).diagonal(dim1=0, dim2=2).permute(2, 0, 1)  # (m, b, b)
    L = (C.reshape(n, m, block).transpose(0, 1) @ torch.linalg.inv(Ck)).transpose(0, 1).reshape(n, n)
    L.reshape(m, block, m, block).diagonal(dim1=0, dim2=2).copy_(torch.eye(block, dtype=H.dtype)[..., None])
    return L, Ck @ Ck.transpose(1, 2)  # diagonal blocks of L set to I exactly (C_k C_k⁻¹ up to rounding)
