"""Simulated OCP Microscaling (MX) formats: MXFP8, MXFP6, MXFP4 and MXINT8.

Paper: "Microscaling Data Formats for Deep Learning" (Rouhani et al., arXiv 2310.10537) and the OCP
Microscaling Formats (MX) Specification v1.0 (2023).

An MX block is k = 32 consecutive elements that share one 8-bit power-of-two scale (E8M0: an
unsigned biased exponent, bias 127, 0xFF = NaN). Following section 6.3 of the specification, the
shared exponent is floor(log2(max |x|)) - emax_elem, where emax_elem is the exponent of the element
format's largest normal, so the block's largest magnitude lands in the element's top binade; the
elements are x / 2^shared_exp rounded to the element format (round-to-nearest-even) with
saturation to the element's largest magnitude.

Element formats: FP8 E4M3 / E5M2 (MXFP8), FP6 E2M3 / E3M2 (MXFP6), FP4 E2M1 (MXFP4), and INT8
(MXINT8: two's-complement integers with an implicit scale of 2^-6, i.e. values k/64; the range is
kept symmetric, |k| <= 127, as in the reference microxcaling library).

Blocks run along the last dimension, which for a weight (out, in) and an activation (..., in) is the
reduction dimension of the matmul, as the specification requires for dot products. A last dimension
that is not a multiple of the block size gets a shorter final block.

The registered `mx` entry quantizes every block linear's weight and (by default) its input to the
chosen MX format, so both operands of the matmul are MX, as the specification's dot product assumes.

Not implemented: the MX dot-product semantics beyond simulation (the accumulation is float32), the
E8M0 NaN propagation for non-finite inputs, and the "floor" vs "nearest" rounding variants of the
reference library (we use round-to-nearest-even for the elements).

Fidelity: exact for the storage formats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from reference_impls.common.fake_quant import fake_quantize_linears
from reference_impls.common.registry import Option, register
from reference_impls.formats.fp8 import FloatFormat, fp_quantize, get_format

SCALE_BITS = 8  # E8M0
SCALE_EMAX = 127  # exponents outside [-127, 127] are not representable in E8M0


@dataclass(frozen=True)
class MXFormat:
    name: str
    element: FloatFormat | None  # None: MXINT8
    element_bits: int
    emax_elem: int
    block_size: int = 32

    @property
    def bits_per_element(self) -> float:
        return self.element_bits + SCALE_BITS / self.block_size


MX_FORMATS = {
    "mxfp8": MXFormat("mxfp8", get_format("e4m3"), 8, get_format("e4m3").emax),
    "mxfp8_e5m2": MXFormat("mxfp8_e5m2", get_format("e5m2"), 8, get_format("e5m2").emax),
    "mxfp6": MXFormat("mxfp6", get_format("e2m3"), 6, get_format("e2m3").emax),
    "mxfp6_e3m2": MXFormat("mxfp6_e3m2", get_format("e3m2"), 6, get_format("e3m2").emax),
    "mxfp4": MXFormat("mxfp4", get_format("e2m1"), 4, get_format("e2m1").emax),
    "mxint8": MXFormat("mxint8", None, 8, 0),
}
MXINT8_FRACTION_BITS = 6  # INT8 element k stands for k · 2^-6
MXINT8_MAX_CODE = 127


def get_mx_format(fmt: str | MXFormat) -> MXFormat:
    if isinstance(fmt, MXFormat):
        return fmt
    try:
        return MX_FORMATS[fmt.lower()]
    except KeyError:
        raise ValueError(f"unknown MX format {fmt!r}; choose one of {sorted(MX_FORMATS)}") from None


def _blocks(x: torch.Tensor, block_size: int) -> tuple[torch.Tensor, int]:
    """(..., n) -> (..., n_blocks, block_size), zero-padded; returns the padding to undo."""
    n = x.shape[-1]
    pad = (-n) % block_size
    if pad:
        x = torch.nn.functional.pad(x, (0, pad))
    return x.reshape(*x.shape[:-1], -1, block_size), pad


def mx_shared_exponent(blocks: torch.Tensor, fmt: MXFormat) -> torch.Tensor:
    """Unbiased shared exponent per block (..., n_blocks, 1); all-zero blocks get the smallest."""
    amax = blocks.abs().amax(dim=-1, keepdim=True)
    e = (torch.frexp(amax).exponent - 1 - fmt.emax_elem).to(amax.dtype)  # exact floor(log2 amax) - emax
    e = torch.where(amax > 0, e, torch.full_like(e, -SCALE_EMAX))
    return e.clamp(-SCALE_EMAX, SCALE_EMAX)


def _quantize_elements(scaled: torch.Tensor, fmt: MXFormat) -> torch.Tensor:
    if fmt.element is None:
        step = 2.0**-MXINT8_FRACTION_BITS
        return torch.round(scaled / step).clamp(-MXINT8_MAX_CODE, MXINT8_MAX_CODE) * step
    return fp_quantize(scaled, fmt.element, saturate=True)


def mx_encode(x: torch.Tensor, fmt: str | MXFormat = "mxfp4", *, block_size: int | None = None):
    """Split x along its last dim into MX blocks; return (element values, shared exponents).

    Element values are the de-scaled elements (representable in the element format), shape
    (..., n_blocks, block_size) including zero padding; shared exponents have shape (..., n_blocks, 1).
    The stored E8M0 byte of a block is shared_exp + 127.
    """
    f = get_mx_format(fmt)
    xf = x if x.dtype == torch.float64 else x.to(torch.float32)  # power-of-two scaling is exact
    blocks, _ = _blocks(xf, block_size or f.block_size)
    shared_exp = mx_shared_exponent(blocks, f)
    return _quantize_elements(blocks / torch.exp2(shared_exp), f), shared_exp


def mx_quantize(
    x: torch.Tensor, fmt: str | MXFormat = "mxfp4", *, block_size: int | None = None
) -> torch.Tensor:
    """Fake-quantize x to an MX format along its last dimension; returns x's shape and dtype."""
    f = get_mx_format(fmt)
    n = x.shape[-1]
    elements, shared_exp = mx_encode(x, f, block_size=block_size)
    out = (elements * torch.exp2(shared_exp)).reshape(*x.shape[:-1], -1)[..., :n]
    return out.to(x.dtype)


def mx_bits_per_element(fmt: str | MXFormat = "mxfp4", *, block_size: int | None = None) -> float:
    f = get_mx_format(fmt)
    return f.element_bits + SCALE_BITS / (block_size or f.block_size)


# ---------------------------------------------------------------- model level
@register(
    "mx",
    bench=[{"fmt": "mxfp4"}, {"fmt": "mxfp6"}, {"fmt": "mxint8"}],
    family="formats",
    papers=["mx-formats"],
    fidelity="exact",
    summary="Simulated OCP Microscaling formats (MXFP4/6/8, MXINT8): 32-element blocks, shared E8M0 scale",
    options={
        "fmt": Option("mxfp4", "MX element format", choices=tuple(MX_FORMATS)),
        "activations": Option(True, "also quantize each linear's input (both matmul operands in MX)"),
    },
)
def run_mx(ctx, *, fmt, activations) -> dict:
    f = get_mx_format(fmt)

    def act(x):
        return mx_quantize(x, f)

    n = fake_quantize_linears(
        ctx,
        weight_quant=lambda w: mx_quantize(w, f),
        act_quant=act if activations else None,
        bits_of=lambda out_f, in_f: (
            out_f * in_f * f.element_bits + out_f * math.ceil(in_f / f.block_size) * SCALE_BITS
        ),
    )
    return {"quantized_linears": n}
