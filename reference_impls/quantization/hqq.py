"""HQQ: Half-Quadratic Quantization, calibration-free.

Source: "Half-Quadratic Quantization of Large Machine Learning Models" (Badri and Shaji, Mobius Labs
blog post, November 2023, https://mobiusml.github.io/hqq_blog/). There is no arXiv paper; the
catalog record says so.

The weight W is quantized group-wise, W_q = clamp(round(W / s + z), 0, 2^b - 1), de-quantized as
W_r = s · (W_q - z). With the min-max scale s fixed, HQQ chooses the zero point z by minimising a
sparsity-promoting l_p norm (p < 1) of the reconstruction error, which tolerates the few large
errors that outlier weights cause instead of letting them pull the whole group:

    min_z ‖W - s·(Q_z(W) - z)‖_p^p,

solved by half-quadratic splitting with an auxiliary error variable W_e:

    min_{z, W_e} ‖W_e‖_p^p + β/2 ‖W_e - (W - s·(Q_z(W) - z))‖²,

alternating (i) W_e ← shrink_p(W - W_r, β), the generalised soft-thresholding
shrink_p(x, β) = sign(x) · relu(|x| - |x|^(p-1) / β), and (ii) the closed-form zero
z ← mean_group(W_q - (W - W_e) / s). Each iteration measures the mean absolute error of the iterate
it used, then updates z; the loop stops at the first iteration whose error does not improve, and
the zero point returned is that of the last update (computed from the rejected iterate, or, when
all `iters` improve, an iterate never measured), not the best one evaluated — as the official `hqq`
package (`optimize_weights_proximal_legacy`, its quantizer's default optimiser) returns it.
The authors' defaults: p = 0.7, β = 10, κ = 1.01, 20 iterations, group size 64.

Beta schedule: β grows by κ each iteration, as in the HQQ write-up and hqq ≤ 0.2.6 (the default
κ = 1.01). hqq 0.2.7 and 0.2.8 (0.2.8.post1 read) dropped the growth: their legacy optimiser keeps
β constant and ignores κ; `kappa=1.0` here reproduces them. With `kappa=1.0` and p, β, iters as
given, the result equals `hqq.core.quantize.Quantizer.quantize(W, nbits, group_size=g, axis=1,
round_zero=False, optimize=True)` on CPU bit for bit (tests/test_hqq.py): we use its arithmetic
(inverse scale 1/s = (2^b - 1)/(max - min), 1 where max - min <= 1e-4, capped at 2e4; float32).
Its `BaseQuantizeConfig` rounds the initial zero for 4 bits (`round_zero=True`); we do not.

Implemented: the zero-point optimisation above with a float (unrounded) zero, as the official code
does by default; exact storage accounting with a 16-bit scale and a 16-bit zero per group.
Not implemented: the optional scale search and the 8-bit "meta" quantization of scales and zeros
that the official library offers; packed low-bit kernels.

Fidelity: exact (follows the published description and the official optimiser's update rules).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from reference_impls.common.registry import Option, register
from reference_impls.common.storage import group_width


@dataclass
class HQQResult:
    weight: torch.Tensor  # de-quantized, shape and dtype of the input
    scale: torch.Tensor  # (out, n_groups)
    zero: torch.Tensor  # (out, n_groups), float
    trace: list[float] = field(default_factory=list)  # mean |W - W_r| of each iterate tried
    lp_trace: list[float] = field(default_factory=list)  # Σ |W - W_r|^p of each iterate tried


def shrink_lp(x: torch.Tensor, beta: float, p: float) -> torch.Tensor:
    """Generalised soft-thresholding: the proximal step of (1/β)·|x|^p (the hqq package's arithmetic)."""
    a = x.abs()
    step = 1.0 / beta if p == 1 else (1.0 / beta) * a.pow(p - 1)  # 0^(p-1) = inf: shrinks to 0
    return (a - step).clamp(min=0.0) * torch.sign(x)


def _groups(weight: torch.Tensor, group_size: int) -> torch.Tensor:
    out_features, in_features = weight.shape
    g = group_width(group_size, in_features, must_divide=True)
    return weight.reshape(out_features, in_features // g, g)  # (out, n_groups, g)


def hqq_quantize_detailed(
    weight: torch.Tensor,
    *,
    bits: int = 4,
    group_size: int = 64,
    lp_norm: float = 0.7,
    beta: float = 10.0,
    kappa: float = 1.01,
    iters: int = 20,
) -> HQQResult:
    G = _groups(weight.detach().float(), group_size)  # (out, n_groups, g)
    W = G.reshape(-1, G.shape[-1])  # one group per row, as the hqq package lays them out (axis=1)
    maxq = 2**bits - 1
    wmin, wmax = W.amin(1, keepdim=True), W.amax(1, keepdim=True)
    # the hqq package's arithmetic: it works with the inverse scale 1/s and quantizes as W·(1/s) + z;
    # a group with range <= 1e-4 gets 1/s = 1, and 1/s is capped at 2e4
    denom = wmax - wmin
    inv = torch.where(denom.abs() <= 1e-4, torch.ones_like(denom), maxq / denom).clamp(max=2e4)
    z = -wmin * inv  # min-max initialisation; iters = 0 gives plain min-max with a float zero

    result = HQQResult(weight, 1.0 / inv, z)
    best_err = float("inf")
    for _ in range(iters):
        Wq = torch.round(W * inv + z).clamp(0, maxq)
        Wr = (Wq - z) / inv
        We = shrink_lp(W - Wr, beta, lp_norm)  # (i) error variable
        z = torch.mean(Wq - (W - We) * inv, dim=1, keepdim=True)  # (ii) closed-form zero point
        beta *= kappa
        err = (W - Wr).abs().mean().item()  # of the iterate just used, not of the new z
        result.trace.append(err)
        result.lp_trace.append((W - Wr).abs().pow(lp_norm).sum().item())
        if not err < best_err:
            break  # the zero computed from the rejected iterate is kept, as the hqq package does
        best_err = err
    s = 1.0 / inv
    Wr = (torch.round(W * inv + z).clamp(0, maxq) - z) * s
    result.weight = Wr.reshape(weight.shape).to(weight.dtype)
    result.scale, result.zero = s.reshape(G.shape[:2]), z.reshape(G.shape[:2])
    return result


def hqq_quantize(
    weight: torch.Tensor,
    *,
    bits: int = 4,
    group_size: int = 64,
    lp_norm: float = 0.7,
    beta: float = 10.0,
    kappa: float = 1.01,
    iters: int = 20,
) -> torch.Tensor:
    """De-quantized HQQ weight (out, in), same dtype as `weight`."""
    return hqq_quantize_detailed(
        weight, bits=bits, group_size=group_size, lp_norm=lp_norm, beta=beta, kappa=kappa, iters=iters
    ).weight


def hqq_bits_per_weight(in_features: int, *, bits: int = 4, group_size: int = 64) -> float:
    """b bits per weight plus a 16-bit scale and a 16-bit zero per group."""
    g = in_features if group_size in (-1, None) else group_size
    return bits + 32 / g


# ---------------------------------------------------------------- model level
@register(
    "hqq",
    bench=[{"bits": 3}, {"bits": 4}],
    family="quantization",
    papers=["hqq"],
    fidelity="exact",
    summary="Calibration-free zero-point optimisation of an lp (p<1) error by half-quadratic splitting",
    options={
        "bits": Option(4, "bits per weight", choices=(2, 3, 4, 8)),
        "group_size": Option(64, "weights per group along the input"),
        "lp_norm": Option(0.7, "p of the sparsity-promoting loss (p < 1)"),
        "beta": Option(10.0, "initial half-quadratic penalty"),
        "kappa": Option(1.01, "penalty growth per iteration"),
        "iters": Option(20, "maximum iterations"),
    },
)
def run_hqq(ctx, *, bits, group_size, lp_norm, beta, kappa, iters) -> dict:
    used: list[int] = []

    def quantize(name: str, w: torch.Tensor) -> torch.Tensor:
        r = hqq_quantize_detailed(
            w, bits=bits, group_size=group_size, lp_norm=lp_norm, beta=beta, kappa=kappa, iters=iters
        )
        used.append(len(r.trace))
        ctx.ledger.add(
            name,
            w.numel(),
            round(w.numel() * hqq_bits_per_weight(w.shape[1], bits=bits, group_size=group_size)),
        )
        return r.weight

    ctx.map_linears(quantize)
    return {"iterations_mean": sum(used) / max(1, len(used))}
