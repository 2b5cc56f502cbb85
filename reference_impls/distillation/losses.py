"""Divergences between a student's and a teacher's next-token distributions (pure, on logits).

Conventions (the project's design contract, DESIGN §6): logits `(..., V)`; p = softmax(logits / T)
with the same temperature T for student and teacher; each divergence is summed over the vocabulary,
then averaged over **all** token positions (every leading dimension). p_S is the student, p_T the
teacher. All four are zero exactly when p_S = p_T and positive otherwise.

- `forward_kl`: T² · KL(p_T ‖ p_S) — Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural
  Network" (arXiv 1503.02531): the soft-target gradient scales as 1/T², so multiplying by T² keeps its
  weight against the hard-label loss when the temperature changes.
- `reverse_kl`: KL(p_S ‖ p_T), the mode-seeking direction MiniLLM (arXiv 2306.08543) minimises; no T².
- `generalized_jsd`: GKD's JSD(β) (Agarwal et al., arXiv 2306.13649, eq. 1) with P = teacher,
  M = (1−β)·p_S + β·p_T, loss = β·KL(p_T ‖ M) + (1−β)·KL(p_S ‖ M); at the endpoints, as TRL's
  `GKDTrainer.generalized_jsd_loss` (≥ 1.x), β = 0 is KL(p_T ‖ p_S) and β = 1 is KL(p_S ‖ p_T). The
  mixture is formed in log space (logsumexp), as TRL does, so no probability underflows to log 0.
- `skew_kl` / `skew_reverse_kl`: DistiLLM's skew divergences (Ko et al., arXiv 2402.03898, eq. 3):
  SKL⁽α⁾ = KL(p_T ‖ α·p_T + (1−α)·p_S) and SRKL⁽α⁾ = KL(p_S ‖ (1−α)·p_T + α·p_S), α = 0.1 the paper's
  default. The official `distillm/losses.py::skewed_forward_kl` returns the cross-entropy
  −Σ p_T log(mix), i.e. SKL plus the teacher's entropy, a constant with the same gradient; here the
  divergence itself is returned so that it is zero at p_S = p_T like the others.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _log_probs(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float):
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ in shape")
    dtype = torch.promote_types(student_logits.dtype, torch.float32)  # bf16 logits: softmax in fp32
    log_s = F.log_softmax(student_logits.to(dtype) / temperature, dim=-1)  # (..., V)
    log_t = F.log_softmax(teacher_logits.to(dtype) / temperature, dim=-1)  # (..., V)
    return log_s, log_t


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) per position, summed over the vocabulary: (...,)."""
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def _mix(log_a: torch.Tensor, log_b: torch.Tensor, weight_b: float) -> torch.Tensor:
    """log((1 − w)·a + w·b), computed without leaving log space."""
    return torch.logaddexp(log_a + math.log1p(-weight_b), log_b + math.log(weight_b))


def forward_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *,
               temperature: float = 1.0) -> torch.Tensor:
    """T² · mean over positions of KL(p_T ‖ p_S) (Hinton's soft-target loss with its T² factor)."""
    log_s, log_t = _log_probs(student_logits, teacher_logits, temperature)
    return temperature ** 2 * _kl(log_t, log_s).mean()


def reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *,
               temperature: float = 1.0) -> torch.Tensor:
    """Mean over positions of KL(p_S ‖ p_T); no T² factor."""
    log_s, log_t = _log_probs(student_logits, teacher_logits, temperature)
    return _kl(log_s, log_t).mean()


def generalized_jsd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, beta: float = 0.5,
                    temperature: float = 1.0) -> torch.Tensor:
    """GKD's JSD(β): β·KL(p_T ‖ M) + (1−β)·KL(p_S ‖ M), M = (1−β)·p_S + β·p_T; TRL's endpoints."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    log_s, log_t = _log_probs(student_logits, teacher_logits, temperature)
    if beta == 0.0:
        return _kl(log_t, log_s).mean()
    if beta == 1.0:
        return _kl(log_s, log_t).mean()
    log_m = _mix(log_s, log_t, beta)  # (..., V)
    return (beta * _kl(log_t, log_m) + (1 - beta) * _kl(log_s, log_m)).mean()


def skew_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, alpha: float = 0.1,
            temperature: float = 1.0) -> torch.Tensor:
    """DistiLLM's skew KL: mean over positions of KL(p_T ‖ α·p_T + (1−α)·p_S); α = 0 is forward KL."""
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"alpha must be in [0, 1), got {alpha}")
    log_s, log_t = _log_probs(student_logits, teacher_logits, temperature)
    log_mix = log_s if alpha == 0.0 else _mix(log_s, log_t, alpha)
    return _kl(log_t, log_mix).mean()


def skew_reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, alpha: float = 0.1,
                    temperature: float = 1.0) -> torch.Tensor:
    """DistiLLM's skew reverse KL: mean of KL(p_S ‖ (1−α)·p_T + α·p_S); α = 0 is reverse KL."""
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"alpha must be in [0, 1), got {alpha}")
    log_s, log_t = _log_probs(student_logits, teacher_logits, temperature)
    log_mix = log_t if alpha == 0.0 else _mix(log_t, log_s, alpha)
    return _kl(log_s, log_mix).mean()

