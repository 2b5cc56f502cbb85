"""SpQR: "SpQR: A Sparse-Quantized Representation for Near-Lossless LLM Weight Compression" (Dettmers,
Svirschevski, Egiazarian, Kuznedelev, Frantar, Ashkboos, Borzunov, Hoefler, Alistarh; arXiv 2306.03078,
ICLR 2024); catalog record `spqr`.

GPTQ's column sweep with three changes: (1) very small groups (β₁ = 16 input columns per row) whose
statistics are themselves quantized (bilevel: each group's per-row scales and zeros quantized to 3 bits
in groups of β₂ = 16 rows, Fig. 3); (2) weights whose removal would cut the Hessian-weighted error of
their group most are kept out of the group's min-max fit (leave-one-out criterion); (3) any weight
whose error (w − q)²/[U]²_qq after rounding exceeds τ · mean_j(Var(W_:j) / [U]²_jj) stays in 16 bits as
a sparse outlier (Algorithm 1; U the upper Cholesky factor of H⁻¹), and the sweep continues.

Implemented (fidelity: exact for the per-layer algorithm, following Vahe1994/SpQR `spqr_engine.py`):
the relative outlier threshold τ (`--outlier-threshold`, 0.2), the leave-one-out refit of every group's
grid, the outlier test and re-quantization per column, in-place column updates (group grids read the
weights as the in-block updates left them, unlike GPTQ), the bilevel statistics (second level
asymmetric min-max with an unrounded zero, first-level zero unrounded when it is quantized),
act-order permutation. Storage counted in full: codes, 3-bit first-level statistics, 16-bit scale and
zero of every second-level group (for scales and for zeros), the permutation (⌈log₂ in⌉ bits per
column), each outlier's 16-bit value and 16-bit column index plus 32-bit CSR row pointers.
Not implemented: the GPU sparse-dense kernel and the packed format (weights stored de-quantized).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from reference_impls.common.hessian import add_damping, inverse_upper_cholesky, mark_dead_inputs
from reference_impls.common.registry import Option, register
from reference_impls.common.storage import SCALE_BITS, group_width


# ---------------------------------------------------------------- pure core
def minmax_grid(x: torch.Tensor, *, bits: int, round_zero: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row asymmetric min-max (scale, zero) of x (rows, cols), the range always containing 0."""
    maxq = 2**bits - 1
    xmin = x.min(1).values.clamp(max=0)
    xmax = x.max(1).values.clamp(min=0)
    empty = (xmin == 0) & (xmax == 0)
    xmin, xmax = torch.where(empty, -1.0, xmin), torch.where(empty, 1.0, xmax)
    scale = (xmax - xmin) / maxq
    zero = -xmin / scale
    return scale, torch.round(zero) if round_zero else zero


def quantize_dequantize(x, scale, zero, maxq):
    return scale * (torch.clamp(torch.round(x / scale + zero), 0, maxq) - zero)


def quantize_stats(v: torch.Tensor, *, bits: int, group: int) -> torch.Tensor:
    """Second level: a statistic per row (rows,) quantized in groups of `group` rows (min-max, unrounded
    zero, as the official `qq_*` quantizers)."""
    g = v.reshape(-1, group)  # (rows / β₂, β₂)
    maxq = 2**bits - 1
    lo, hi = g.min(1, keepdim=True).values, g.max(1, keepdim=True).values
    scale = ((hi - lo) / maxq).clamp(min=1e-12)
    return quantize_dequantize(g, scale, -lo / scale, maxq).reshape_as(v)


@dataclass
class SpQRConfig:
    bits: int = 3
    group_size: int = 16  # β₁
    qq_bits: int = 3  # bits of the first-level scales and zeros (0 = keep them in 16 bits)
    qq_group: int = 16  # β₂
    outlier_threshold: float = 0.2  # τ, relative (inf = no outliers)


def group_grid(Wg: torch.Tensor, Ud: torch.Tensor, threshold: float, cfg: SpQRConfig):
    """(scale, zero) of one group (out, β₁) fitted without its likely outliers (leave-one-out)."""
    if math.isfinite(threshold):
        reduction = leave_one_out_reduction(Wg, Ud, bits=cfg.bits)  # (out, β₁)
        keep = (reduction <= threshold).to(Wg.dtype)
        mean = (Wg * keep).sum(1, keepdim=True) / keep.sum(1, keepdim=True).clamp(min=1)
        Wg = Wg * keep + mean * (1 - keep)  # likely outliers replaced by the row's inlier mean
    bilevel = cfg.qq_bits > 0
    scale, zero = minmax_grid(Wg, bits=cfg.bits, round_zero=not bilevel)
    if bilevel:
        xmin = -zero * scale
        scale = quantize_stats(scale, bits=cfg.qq_bits, group=cfg.qq_group)
        zero = quantize_stats(-xmin / scale, bits=cfg.qq_bits, group=cfg.qq_group)
    return scale, zero


def leave_one_out_reduction(Wg: torch.Tensor, Ud: torch.Tensor, *, bits: int) -> torch.Tensor:
    """For each weight of a group (out, β₁): how much the group's Σ((w − q)/U_jj)² drops when the grid
    is fitted without it and it is not quantized (`get_leave_one_out_error`)."""
    n_out, b = Wg.shape
    maxq = 2**bits - 1
    idx = torch.arange(b)
    loo = idx[1:] - (idx[:, None] >= idx[1:]).long()  # (β₁, β₁ − 1): every column but one
    data = Wg[:, loo].reshape(n_out * b, b - 1)
    s, z = minmax_grid(data, bits=bits)
    err = ((quantize_dequantize(data, s[:, None], z[:, None], maxq) - data) / Ud[loo].repeat(n_out, 1))
    loo_err = err.pow(2).sum(-1).reshape(n_out, b)
    s, z = minmax_grid(Wg, bits=bits)
    base = ((quantize_dequantize(Wg, s[:, None], z[:, None], maxq) - Wg) / Ud).pow(2).sum(1, keepdim=True)
    return base - loo_err


@dataclass
class SpQRResult:
    weight: torch.Tensor  # de-quantized with outliers in place, (out, in), original column order
    outliers: torch.Tensor  # bool (out, in), original column order
    bits: int  # true storage of the matrix


def spqr(weight: torch.Tensor, hessian: torch.Tensor, cfg: SpQRConfig, *, act_order: bool = True,
         damp: float = 0.01, block_size: int = 128) -> SpQRResult:
    W = weight.to(torch.promote_types(weight.dtype, torch.float32)).clone()  # (out, in)
    H = hessian.to(W.dtype).clone()
    n_out, n_in = W.shape
    gs = group_width(cfg.group_size, n_in)
    perm = torch.argsort(torch.diag(H), descending=True) if act_order else torch.arange(n_in)
    W, H = W[:, perm], H[perm][:, perm]
    W[:, mark_dead_inputs(H)] = 0
    add_damping(H, damp)
    U = inverse_upper_cholesky(H)  # (in, in)
    Ud = U.diagonal()
    # τ relative to the mean over columns of Var(W_:j) / U_jj² (the official outlier_scale)
    threshold = cfg.outlier_threshold * (W.var(0) / Ud.pow(2)).mean().item()
    outliers = torch.zeros_like(W, dtype=torch.bool)
    Err = torch.zeros_like(W)
    maxq = 2**cfg.bits - 1
    for i1 in range(0, n_in, block_size):
        i2 = min(i1 + block_size, n_in)
        for j in range(i1, i2):
            if j % gs == 0:
                scale, zero = group_grid(W[:, j : j + gs], Ud[j : j + gs], threshold, cfg)
            w = W[:, j]
            q = quantize_dequantize(w, scale, zero, maxq)
            if math.isfinite(threshold):
                outliers[:, j] = ((w - q) / Ud[j]).pow(2) > threshold  # kept in 16 bits
                q = torch.where(outliers[:, j], w, q)
            Err[:, j] = (w - q) / Ud[j]
            W[:, j] = q
            W[:, j + 1 : i2].addr_(Err[:, j], U[j, j + 1 : i2], alpha=-1)
        W[:, i2:].addmm_(Err[:, i1:i2], U[i1:i2, i2:], alpha=-1)
    inv = torch.argsort(perm)
    out = outliers[:, inv]
    return SpQRResult(W[:, inv].to(weight.dtype), out, spqr_bits(n_out, n_in, cfg, int(out.sum()), act_order))


def spqr_bits(n_out: int, n_in: int, cfg: SpQRConfig, n_outliers: int, act_order: bool) -> int:
    """Codes + first-level stats + second-level stats + permutation + outliers (CSR, 16-bit values)."""
    groups = math.ceil(n_in / group_width(cfg.group_size, n_in))
    if cfg.qq_bits:
        # second level: a 16-bit scale and zero per β₂ rows, for the scales and for the zeros
        second = math.ceil(n_out / cfg.qq_group) * groups * 2 * 2 * SCALE_BITS
        stats = n_out * groups * 2 * cfg.qq_bits + second
    else:
        stats = n_out * groups * (SCALE_BITS + cfg.bits)
    perm = n_in * math.ceil(math.log2(n_in)) if act_order else 0
    sparse = n_outliers * (16 + 16) + ((n_out + 1) * 32 if n_outliers else 0)
    return n_out * n_in * cfg.bits + stats + perm + sparse


def spqr_quantize(weight, hessian, *, bits=3, group_size=16, qq_bits=3, qq_group=16, outlier_threshold=0.2,
                  act_order=True, damp=0.01) -> torch.Tensor:
    """The de-quantized SpQR weight (out, in) with its outliers in place."""
    cfg = SpQRConfig(bits, group_size, qq_bits, qq_group, outlier_threshold)
    return spqr(weight, hessian, cfg, act_order=act_order, damp=damp).weight


# ---------------------------------------------------------------- model-level entry
@register(
    "spqr", family="quantization", papers=["spqr"], fidelity="exact",
    summary="GPTQ sweep with 16-column groups, 3-bit bilevel statistics and 16-bit sparse outliers",
    options={
        "bits": Option(3, "bits per weight code (2-8)"),
        "group_size": Option(16, "β₁: input columns per group"),
        "qq_bits": Option(3, "bits of the group scales and zeros (0 = 16-bit statistics)"),
        "qq_group": Option(16, "β₂: rows per second-level group"),
        "outlier_threshold": Option(0.2, "τ, relative outlier threshold (0 = no outliers)"),
        "act_order": Option(True, "permute columns by decreasing H[d,d]"),
        "damp": Option(0.01, "dampening, as a fraction of mean diag(H)"),
    },
    bench=[{"bits": b, "outlier_threshold": t} for b in (2, 3) for t in (0.0, 1.0, 0.2)],
    bench_models=("causal",),
)
def run_spqr(ctx, *, bits, group_size, qq_bits, qq_group, outlier_threshold, act_order, damp) -> dict:
    if not 2 <= bits <= 8:
        raise ValueError(f"--bits must be between 2 and 8, got {bits}")
    if qq_bits and not 2 <= qq_bits <= 8:
        raise ValueError(f"--qq-bits must be 0 or between 2 and 8, got {qq_bits}")
    if not outlier_threshold >= 0:
        raise ValueError(f"--outlier-threshold must be positive, or 0 for none, got {outlier_threshold}")
    cfg = SpQRConfig(bits, group_size, qq_bits, qq_group, outlier_threshold or float("inf"))
    n_out = 0

    def process(block) -> None:
        nonlocal n_out
        for name in block.linears:
            w = block.weight(name)
            if qq_bits and w.shape[0] % qq_group:
                raise ValueError(f"--qq-group {qq_group} must divide the {w.shape[0]} rows of {name}")
            res = spqr(w, block.stats[name].hessian, cfg, act_order=act_order, damp=damp)
            block.set_weight(name, res.weight)
            n_out += int(res.outliers.sum())
            ctx.ledger.add(f"{block.name}.{name}", w.numel(), res.bits)

    ctx.walk(process, stats=("hessian",))
    return {"outliers": n_out, "outlier_fraction": n_out / max(ctx.ledger.n_weights, 1)}
