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
