"""Simulated low-precision floating-point formats: FP8 (E4M3, E5M2) and the MX element minifloats.

Papers: "FP8 Formats for Deep Learning" (Micikevicius et al., arXiv 2209.05433) and the OCP 8-bit
Floating Point Specification (OFP8, rev. 1.0, 2023); the FP6 (E2M3, E3M2) and FP4 (E2M1) element
types come from the OCP Microscaling Formats (MX) Specification v1.0 (arXiv 2310.10537 is the paper).

Implemented:
- a generic sign/exponent/mantissa minifloat (`FloatFormat`) with subnormals, round-to-nearest-even,
  saturation or overflow to the format's special value, and the formats' special encodings:
  E4M3 has no infinity and a single NaN mantissa (S.1111.111), so its largest normal is 448;
  E5M2 follows IEEE 754 (S.11111.00 = inf, other S.11111.xx = NaN), largest normal 57344;
  the FP6/FP4 element types have neither inf nor NaN;
- `fp_quantize` (value -> nearest representable value), `fp_encode` / `fp_decode` (value <-> bit
  pattern), and `fp8_quantize`, a scaled fake-quantizer for weights and activations (per-tensor,
  per-row or per-token scale so that the largest magnitude maps to the format's largest normal, as
  FP8 inference recipes do);
- the registered `fp8` entry: every block linear computes with FP8 weights (one float32 scale per
  output row) and, by default, FP8 inputs with one dynamic scale per tensor (or per token).

Not implemented: stochastic rounding, FP8 training recipes (delayed scaling, amax history), real FP8
matmul kernels; arithmetic here is float32 simulation of the storage format.

Fidelity: exact for the number formats: bit for bit equal to torch's float8 casts with saturation
for E4M3 and without for E5M2, the modes torch implements; where the other mode differs from torch
is stated in `fp_quantize`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from reference_impls.common.fake_quant import fake_quantize_linears
from reference_impls.common.registry import Option, register


@dataclass(frozen=True)
class FloatFormat:
    name: str
    exp_bits: int
    man_bits: int
    bias: int
    max_normal: float
    has_inf: bool  # IEEE-style all-ones exponent with zero mantissa encodes infinity
    has_nan: bool

    @property
    def bits(self) -> int:
        return 1 + self.exp_bits + self.man_bits

    @property
    def min_exp(self) -> int:
        return 1 - self.bias  # exponent of the smallest normal; subnormals share it

    @property
    def min_normal(self) -> float:
        return 2.0**self.min_exp

    @property
    def min_subnormal(self) -> float:
        return 2.0 ** (self.min_exp - self.man_bits)

    @property
    def emax(self) -> int:
        """Exponent of the largest normal (the MX spec's emax_elem)."""
        return math.floor(math.log2(self.max_normal))


E4M3 = FloatFormat("e4m3", 4, 3, 7, 448.0, has_inf=False, has_nan=True)
E5M2 = FloatFormat("e5m2", 5, 2, 15, 57344.0, has_inf=True, has_nan=True)
FP6_E2M3 = FloatFormat("e2m3", 2, 3, 1, 7.5, has_inf=False, has_nan=False)
FP6_E3M2 = FloatFormat("e3m2", 3, 2, 3, 28.0, has_inf=False, has_nan=False)
FP4_E2M1 = FloatFormat("e2m1", 2, 1, 1, 6.0, has_inf=False, has_nan=False)

FORMATS = {f.name: f for f in (E4M3, E5M2, FP6_E2M3, FP6_E3M2, FP4_E2M1)}


def get_format(fmt: str | FloatFormat) -> FloatFormat:
    if isinstance(fmt, FloatFormat):
        return fmt
    try:
        return FORMATS[fmt.lower()]
    except KeyError:
        raise ValueError(f"unknown float format {fmt!r}; choose one of {sorted(FORMATS)}") from None


def fp_quantize(x: torch.Tensor, fmt: str | FloatFormat, *, saturate: bool = True) -> torch.Tensor:
    """Round every element to the nearest value representable in `fmt` (ties to even).

    saturate=True clamps finite overflow (and infinities) to ±max_normal, the OCP "satfinite"
    conversion used for quantization. saturate=False is the OCP non-saturating conversion: overflow
    (and ±inf) gives ±inf in E5M2 and NaN in E4M3, which has no infinity. NaN stays NaN.

    Against torch's casts (`x.to(torch.float8_e4m3fn / float8_e5m2)`, checked bit for bit through
    `fp_encode` in tests/test_formats.py, over every code's value, every midpoint and random inputs):
    - E4M3, saturate=True: equal for every input; torch's e4m3fn cast saturates overflow and ±inf.
      saturate=False differs exactly there: NaN where torch gives ±448.
    - E5M2, saturate=False: equal for every input (torch overflows to ±inf). saturate=True differs
      exactly where the value rounds past 57344 or is ±inf: ±57344 where torch gives ±inf; it equals
      torch's cast of x clamped to [-57344, 57344].
    - every other input (everything that rounds into the finite range, subnormals and ±0 included,
      and NaN) is equal in both modes.
    """
    f = get_format(fmt)
    # Scaling by powers of two and rounding are exact in float32 for float32/16/bf16 inputs, so
    # float64 is only needed for float64 inputs.
    xf = x if x.dtype == torch.float64 else x.to(torch.float32)
    a = xf.abs()
    # Exponent of each value's binade, exactly (frexp: a = m·2^k, m in [0.5, 1)); below the normal
    # range the subnormal spacing is fixed.
    e = (torch.frexp(a).exponent - 1).clamp(min=f.min_exp)
    ulp = torch.ldexp(torch.ones_like(a), e - f.man_bits)
    q = torch.round(a / ulp) * ulp  # torch.round rounds half to even
    q = torch.where(torch.isinf(a), a, q)  # inf / inf above would give NaN
    if saturate:
        q = q.clamp(max=f.max_normal)
    else:
        overflow = q > f.max_normal
        q = torch.where(overflow, torch.full_like(q, math.inf if f.has_inf else math.nan), q)
    out = torch.copysign(q, xf)
    out = torch.where(torch.isnan(xf), xf, out)
    if not saturate and f.has_inf:
        out = torch.where(torch.isinf(xf), xf, out)
    return out.to(x.dtype)


def fp_encode(x: torch.Tensor, fmt: str | FloatFormat, *, saturate: bool = True) -> torch.Tensor:
    """Bit patterns (as int64 in [0, 2**bits)) of the values `fp_quantize` rounds x to."""
    f = get_format(fmt)
    q = fp_quantize(x.to(torch.float64), f, saturate=saturate)
    sign = torch.signbit(q).to(torch.int64)
    a = q.abs()
    finite = torch.isfinite(a)
    a_fin = torch.where(finite, a, torch.zeros_like(a))
    normal = a_fin >= f.min_normal
    e = torch.floor(torch.log2(torch.where(normal, a_fin, torch.ones_like(a_fin))))
    exp_field = torch.where(normal, e + f.bias, torch.zeros_like(e))
    mant = torch.where(
        normal,
        (a_fin / torch.exp2(e) - 1.0) * 2**f.man_bits,
        a_fin / f.min_subnormal,
    )
    code = (exp_field.to(torch.int64) << f.man_bits) | mant.round().to(torch.int64)
    all_ones_exp = (2**f.exp_bits - 1) << f.man_bits
    if f.has_inf:
        code = torch.where(torch.isinf(a), torch.full_like(code, all_ones_exp), code)
    if f.has_nan:  # all-ones exponent and mantissa (S.1111.111, S.11111.11), the sign kept, as torch does
        nan_code = all_ones_exp | (2**f.man_bits - 1)
        code = torch.where(torch.isnan(a), torch.full_like(code, nan_code), code)
    return code | (sign << (f.bits - 1))


def fp_decode(code: torch.Tensor, fmt: str | FloatFormat) -> torch.Tensor:
    """Float32 values of bit patterns `code` (integers in [0, 2**bits))."""
    f = get_format(fmt)
    c = code.to(torch.int64)
    sign = torch.where(((c >> (f.bits - 1)) & 1) == 1, -1.0, 1.0).to(torch.float64)
    exp_field = (c >> f.man_bits) & (2**f.exp_bits - 1)
    mant = (c & (2**f.man_bits - 1)).to(torch.float64)
    normal_val = torch.exp2((exp_field - f.bias).to(torch.float64)) * (1.0 + mant / 2**f.man_bits)
    sub_val = mant * f.min_subnormal
    val = sign * torch.where(exp_field == 0, sub_val, normal_val)
    top = exp_field == 2**f.exp_bits - 1
    if f.has_inf:  # IEEE: the all-ones exponent is reserved for inf (mantissa 0) and NaN
        val = torch.where(top & (mant == 0), sign * math.inf, val)
        val = torch.where(top & (mant != 0), torch.full_like(val, math.nan), val)
    elif f.has_nan:  # E4M3: only the all-ones mantissa of the all-ones exponent is NaN
        val = torch.where(top & (mant == 2**f.man_bits - 1), torch.full_like(val, math.nan), val)
    return val.to(torch.float32)


def _absmax(x: torch.Tensor, granularity: str) -> torch.Tensor:
    if granularity == "tensor":
        return x.abs().amax().reshape([1] * x.dim())
    if granularity in ("channel", "token"):  # rows of a weight (out, in) or tokens of (..., in)
        return x.abs().amax(dim=-1, keepdim=True)
    raise ValueError(f"granularity must be 'tensor', 'channel' or 'token', not {granularity!r}")


def fp8_quantize(x: torch.Tensor, *, fmt: str = "e4m3", granularity: str = "tensor") -> torch.Tensor:
    """Scaled fake-quantization to an FP8 format: x ≈ s · fp8(x / s), s = absmax / max_normal.

    The scale itself is kept in float32 (as FP8 recipes do); the returned tensor is the de-quantized
    value in x's dtype and shape.
    """
    f = get_format(fmt)
    scale = (_absmax(x.float(), granularity) / f.max_normal).clamp(min=torch.finfo(torch.float32).tiny)
    return (fp_quantize(x.float() / scale, f, saturate=True) * scale).to(x.dtype)


def fp8_bits_per_element(fmt: str = "e4m3", *, granularity: str = "channel", in_features: int = 1) -> float:
    """Storage cost of an FP8 weight: 8 bits plus one float32 scale per row (or per tensor)."""
    scale_bits = 32.0 / in_features if granularity == "channel" else 0.0
    return get_format(fmt).bits + scale_bits


# ---------------------------------------------------------------- model level
@register(
    "fp8",
    bench=[{"fmt": "e4m3"}, {"fmt": "e5m2"}],
    family="formats",
    papers=["fp8-formats"],
    fidelity="exact",
    summary="Simulated FP8 (E4M3 / E5M2) weights with per-channel scales and FP8 activations",
    options={
        "fmt": Option("e4m3", "FP8 format of weights and activations", choices=("e4m3", "e5m2")),
        "act_granularity": Option(
            "tensor",
            "activation scale: per tensor or per token, or none (weight-only)",
            choices=("tensor", "token", "none"),
        ),
    },
)
def run_fp8(ctx, *, fmt, act_granularity) -> dict:
    act = None
    if act_granularity != "none":

        def act(x):
            return fp8_quantize(x, fmt=fmt, granularity=act_granularity)

    # FP8 payload + one float32 scale per output row
    n = fake_quantize_linears(
        ctx,
        weight_quant=lambda w: fp8_quantize(w, fmt=fmt, granularity="channel"),
        act_quant=act,
        bits_of=lambda out_f, in_f: 8 * out_f * in_f + 32 * out_f,
    )
    return {"quantized_linears": n}
