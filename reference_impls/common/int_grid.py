"""The uniform integer grid every scalar weight quantizer here shares.

Min-max grids with the conventions of the official GPTQ code (IST-DASLab/gptq `Quantizer.find_params`
with `perchannel=True, mse=False`): per output row, asymmetric by default with an integer zero point
`zero = round(-min/scale)`, the range always containing 0; symmetric with `scale = 2·max|w|/maxq` and
the fixed zero `(maxq+1)/2`. `ColumnGrid` is the grid a column sweep (GPTQ, SparseGPT's joint
quantization) is at. RTN (quantization/rtn.py) is this grid applied once; it lives here because
GPTQ, SparseGPT, QuIP, OWQ and others round onto the same grid.
"""

from __future__ import annotations

import torch

from reference_impls.common.storage import group_width


def minmax_params(w: torch.Tensor, *, bits: int, sym: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row (scale, zero) of a min-max grid for `w` (rows, cols); both (rows,)."""
    maxq = 2**bits - 1
    zeros = torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
    xmin = torch.minimum(w.min(1).values, zeros)  # the grid always represents 0 exactly
    xmax = torch.maximum(w.max(1).values, zeros)
    if sym:
        xmax = torch.maximum(xmin.abs(), xmax)
        # As in the official code: only rows with a negative entry get a range symmetric around 0.
        xmin = torch.where(xmin < 0, -xmax, xmin)
    empty = (xmin == 0) & (xmax == 0)
    xmin = torch.where(empty, -torch.ones_like(xmin), xmin)
    xmax = torch.where(empty, torch.ones_like(xmax), xmax)
    scale = (xmax - xmin) / maxq
    zero = torch.full_like(scale, (maxq + 1) / 2) if sym else torch.round(-xmin / scale)
    return scale, zero


def quantize_int(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, maxq: int) -> torch.Tensor:
    """Integer codes in [0, maxq]; `scale`/`zero` broadcast against `w`."""
    return torch.clamp(torch.round(w / scale) + zero, 0, maxq)


def fake_quantize(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, maxq: int) -> torch.Tensor:
    """Quantize then de-quantize: the value the layer computes with, scale · (q − zero)."""
    return scale * (quantize_int(w, scale, zero, maxq) - zero)



class ColumnGrid:
    """The grid of the column GPTQ's sweep is at (shared with SparseGPT's joint quantization).

    Without groups: one grid per row from the whole original weight (the official code fits it
    before zeroing dead columns). With groups: a grid fitted when the sweep reaches a group's first
    column, from `W` as the previous blocks left it (the official code reads W, not the in-block
    working copy); consecutive in the sweep's (possibly permuted) order."""

    def __init__(self, weight: torch.Tensor, *, bits: int, group_size: int, sym: bool):
        self.bits, self.sym, self.maxq = bits, sym, 2**bits - 1
        self.width = group_width(group_size, weight.shape[1])
        self.grouped = self.width < weight.shape[1]
        self.scale, self.zero = minmax_params(weight, bits=bits, sym=sym)  # (out,)
        self.scales, self.zeros = ([], []) if self.grouped else ([self.scale], [self.zero])

    def at(self, col: int, W: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, zero) of column `col`, W (out, in) in the sweep's column order."""
        if self.grouped and col % self.width == 0:
            self.scale, self.zero = minmax_params(W[:, col : col + self.width], bits=self.bits, sym=self.sym)
            self.scales.append(self.scale)
            self.zeros.append(self.zero)
        return self.scale, self.zero

    def quantize(self, w: torch.Tensor, col: int, W: torch.Tensor) -> torch.Tensor:
        """The de-quantized column w (out,) on the grid of column `col`."""
        return fake_quantize(w, *self.at(col, W), self.maxq)
