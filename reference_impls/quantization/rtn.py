"""Round-to-nearest (RTN) weight quantization: the baseline every PTQ paper compares to.

Serves the catalog record `case-for-4bit` ("The case for 4-bit precision: k-bit Inference Scaling
Laws", Dettmers & Zettlemoyer, arXiv 2212.09720), whose experiments quantize weights by rounding to
the nearest point of a per-block integer grid; and it is GPTQ's `--nearest` baseline.

Implemented (fidelity: simplified): integer min-max grids with the conventions of the official GPTQ
code (IST-DASLab/gptq `Quantizer.find_params` with `perchannel=True, mse=False`): per output row,
asymmetric by default with an integer zero point `zero = round(-min/scale)`, the range always
containing 0; symmetric with `scale = 2·max|w|/maxq` and the fixed zero `(maxq+1)/2`; groups of
`group_size` consecutive input columns (-1 = the whole row), 2-8 bits.
Not implemented: the paper's float / dynamic-exponent / quantile data types and its outlier-dependent
block sizes, and MSE-optimal clipping (`mse=True` in the official code).

The grid functions (`minmax_params`, `fake_quantize`) live in `reference_impls.common.int_grid`, the
single grid that GPTQ and the other quantizers in this package round onto.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from reference_impls.common.int_grid import fake_quantize, minmax_params
from reference_impls.common.registry import Option, register
from reference_impls.common.storage import group_width


@dataclass
class QuantizedWeight:
    weight: torch.Tensor  # de-quantized, (out, in)
    scale: torch.Tensor  # (out, n_groups)
    zero: torch.Tensor  # (out, n_groups)
    g_idx: torch.Tensor  # (in,) group index of each input column


def group_starts(in_features: int, group_size: int) -> range:
    return range(0, in_features, group_width(group_size, in_features))


def rtn(weight: torch.Tensor, *, bits: int = 4, group_size: int = -1, sym: bool = False) -> QuantizedWeight:
    """RTN with its grid parameters, for callers that store or check them."""
    if not 1 <= bits <= 16:
        raise ValueError(f"bits must be in 1..16, got {bits}")
    w = weight.float() if weight.dtype not in (torch.float32, torch.float64) else weight
    maxq = 2**bits - 1
    out = torch.empty_like(w)
    scales, zeros = [], []
    g_idx = torch.empty(w.shape[1], dtype=torch.long, device=w.device)
    width = group_width(group_size, w.shape[1])  # a last group may be shorter
    for g, i1 in enumerate(group_starts(w.shape[1], group_size)):
        i2 = min(i1 + width, w.shape[1])
        scale, zero = minmax_params(w[:, i1:i2], bits=bits, sym=sym)  # (out,)
        out[:, i1:i2] = fake_quantize(w[:, i1:i2], scale[:, None], zero[:, None], maxq)
        scales.append(scale)
        zeros.append(zero)
        g_idx[i1:i2] = g
    return QuantizedWeight(out.to(weight.dtype), torch.stack(scales, 1), torch.stack(zeros, 1), g_idx)


def rtn_quantize(
    weight: torch.Tensor, *, bits: int = 4, group_size: int = -1, sym: bool = False
) -> torch.Tensor:
    """The de-quantized RTN weight, same shape and dtype as `weight` (out, in)."""
    return rtn(weight, bits=bits, group_size=group_size, sym=sym).weight


@register(
    "rtn", family="quantization", papers=["case-for-4bit"], fidelity="simplified",
    summary="Round-to-nearest integer weight quantization (per-channel or group-wise, sym/asym)",
    options={
        "bits": Option(4, "bits per weight (2-8)"),
        "group_size": Option(-1, "input columns per quantization group (-1 = whole row)"),
        "sym": Option(False, "symmetric grid (no stored zero point)"),
    },
    bench=[{"bits": b, "group_size": g} for b in (3, 4, 8) for g in (-1, 128)],
)
def run_rtn(ctx, *, bits: int, group_size: int, sym: bool) -> dict:
    """Quantize every linear layer of every block; no calibration data."""
    if not 2 <= bits <= 8:
        raise ValueError(f"--bits must be between 2 and 8, got {bits}")

    def quantize(name: str, w: torch.Tensor) -> torch.Tensor:
        ctx.ledger.add_quantized(name, *w.shape, bits=bits, group_size=group_size, sym=sym)
        return rtn_quantize(w, bits=bits, group_size=group_size, sym=sym)

    ctx.map_linears(quantize)
    return {}
