"""NF4 with double quantization, the storage format of QLoRA, shared by every method that stores NF4.

The 4-bit NormalFloat levels, block-wise absmax quantization (blocks of 64 along the flattened
weight), and double quantization of the absmax constants with bitsandbytes' signed 8-bit dynamic map
(blocks of 256, centred by their mean). `reference_impls/quantization/nf4.py` (the `nf4` method)
documents the paper, the conventions and the agreement with bitsandbytes bit for bit; QLoRA's frozen
base (`reference_impls/finetuning/qlora.py`) stores its weights in this format.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.special import ndtri

# The published NF4 levels (QLoRA appendix; identical to bitsandbytes' NF4 table).
NF4_LEVELS = torch.tensor(
    [
        -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
        -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
        0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
        0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
    ]
)  # fmt: skip
NF4_OFFSET = 0.9677083  # (1 - 1/(2·15) + 1 - 1/(2·16)) / 2: the quantile range that avoids ±inf


def nf4_levels_from_quantiles(offset: float = NF4_OFFSET) -> torch.Tensor:
    """Rebuild the NF4 levels: 8 positive and 7 negative N(0,1) quantiles plus an exact zero."""
    pos = ndtri(torch.linspace(offset, 0.5, 9, dtype=torch.float64))[:-1]  # 8 quantiles > 0
    neg = -ndtri(torch.linspace(offset, 0.5, 8, dtype=torch.float64))[:-1]  # 7 quantiles < 0
    v = torch.cat([neg, torch.zeros(1, dtype=torch.float64), pos]).sort().values
    return (v / v.abs().max()).float()


def dynamic_map_8bit() -> torch.Tensor:
    """The signed 8-bit dynamic tree map (256 sorted values in [-1, 1]).

    Decade i = 0..6 covers magnitudes 10^(i-6)·[0.1, 1] with 2^i values at the midpoints of 2^i
    equal bins (more leading zero bits = a smaller decade with fewer fraction bits); with both signs,
    0 and 1 this gives 2·127 + 2 = 256 values.

    The arithmetic is bitsandbytes' `create_dynamic_map(signed=True)` step for step (float32 bin
    edges and midpoints, scaled by the decade), so the 256 float32 values are its map exactly.
    """
    values = [0.0, 1.0]
    for i in range(7):
        edges = torch.linspace(0.1, 1.0, 2**i + 1, dtype=torch.float32)
        mids = (edges[:-1] + edges[1:]) / 2.0
        values += ((10 ** (i - 6)) * mids).tolist() + ((-(10 ** (i - 6))) * mids).tolist()
    return torch.tensor(sorted(values), dtype=torch.float32)


def nearest_code(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the nearest codebook value (codebook sorted ascending).

    A value exactly at the float32 midpoint of two neighbours goes to the lower one, as in
    bitsandbytes (its `quantize_4bit` bucketizes against the float32 midpoints with right=False; its
    CUDA NF4 tree and 8-bit search also pick the lower value on a tie).
    """
    mids = (codebook[1:] + codebook[:-1]) / 2
    return torch.bucketize(x.contiguous(), mids.to(x.dtype), right=False)


def absmax_blockwise(x: torch.Tensor, codebook: torch.Tensor, block_size: int, *, short_block_divides=False):
    """Flat x -> (codes (n,), absmax (n_blocks,)); the last block may be short.

    As bitsandbytes does it: each block is multiplied by the float32 reciprocal of its absmax (absmax
    clamped to >= 1e-38, so an all-zero block stays zero) and clamped to [-1, 1]. bitsandbytes' 4-bit
    quantizer divides a short last block by its absmax instead (`short_block_divides`); x · (1/a)
    and x / a differ in the last bit now and then, which moves a value sitting on a midpoint.
    """
    n = x.numel()
    pad = (-n) % block_size
    blocks = torch.nn.functional.pad(x.reshape(-1), (0, pad)).reshape(-1, block_size)  # (n_blocks, block)
    absmax = blocks.abs().amax(dim=1)
    safe = absmax.clamp(min=1e-38)
    normed = (blocks * (1.0 / safe)[:, None]).clamp(-1, 1)
    if short_block_divides and pad:
        normed[-1] = (blocks[-1] / safe[-1]).clamp(-1, 1)
    return nearest_code(normed, codebook).reshape(-1)[:n], absmax


def absmax_blockwise_dequantize(codes, absmax, codebook, block_size):
    n = codes.numel()
    pad = (-n) % block_size
    vals = torch.nn.functional.pad(codebook[codes.long()], (0, pad)).reshape(-1, block_size)
    return (vals * absmax[:, None]).reshape(-1)[:n]


@dataclass
class NF4Tensor:
    """What is stored: 4-bit codes, and either float32 absmax or their double-quantized form."""

    shape: torch.Size
    codes: torch.Tensor  # (numel,) uint8 in [0, 16)
    block_size: int
    absmax: torch.Tensor | None  # (n_blocks,) float32 when not double-quantized
    absmax_codes: torch.Tensor | None  # (n_blocks,) uint8 dynamic-map codes
    absmax_scale: torch.Tensor | None  # (n_blocks / dq_block_size,) float32
    absmax_mean: float
    dq_block_size: int

    def dequantize_absmax(self) -> torch.Tensor:
        if self.absmax is not None:
            return self.absmax
        centred = absmax_blockwise_dequantize(
            self.absmax_codes, self.absmax_scale, dynamic_map_8bit(), self.dq_block_size
        )
        return centred + self.absmax_mean

    def bits(self) -> int:
        n_blocks = math.ceil(self.codes.numel() / self.block_size)
        if self.absmax is not None:
            return 4 * self.codes.numel() + 32 * n_blocks
        return 4 * self.codes.numel() + 8 * n_blocks + 32 * self.absmax_scale.numel() + 32


def nf4_encode(
    weight: torch.Tensor, *, block_size: int = 64, double_quant: bool = True, dq_block_size: int = 256
) -> NF4Tensor:
    w = weight.detach().float()
    codes, absmax = absmax_blockwise(w, NF4_LEVELS.to(w.device), block_size, short_block_divides=True)
    state = NF4Tensor(w.shape, codes.to(torch.uint8), block_size, absmax, None, None, 0.0, dq_block_size)
    if double_quant:
        # absmax values are all positive; centring them lets the signed 8-bit map use both halves
        mean = absmax.mean().item()
        cb = dynamic_map_8bit().to(w.device)
        acodes, ascale = absmax_blockwise(absmax - mean, cb, dq_block_size)
        state.absmax, state.absmax_codes, state.absmax_scale = None, acodes.to(torch.uint8), ascale
        state.absmax_mean = mean
    return state


def nf4_decode(state: NF4Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    levels = NF4_LEVELS.to(state.codes.device)
    w = absmax_blockwise_dequantize(state.codes, state.dequantize_absmax(), levels, state.block_size)
    return w.reshape(state.shape).to(dtype)


def nf4_quantize(
    weight: torch.Tensor, *, block_size: int = 64, double_quant: bool = True, dq_block_size: int = 256
) -> torch.Tensor:
    """De-quantized NF4 weight (what the layer computes with), same shape and dtype as `weight`."""
    state = nf4_encode(weight, block_size=block_size, double_quant=double_quant, dq_block_size=dq_block_size)
    return nf4_decode(state, weight.dtype)


def nf4_bits_per_weight(
    numel: int, *, block_size: int = 64, double_quant: bool = True, dq_block_size: int = 256
) -> float:
    n_blocks = math.ceil(numel / block_size)
    if not double_quant:
        return (4 * numel + 32 * n_blocks) / numel
    return (4 * numel + 8 * n_blocks + 32 * math.ceil(n_blocks / dq_block_size) + 32) / numel


class NF4Linear(torch.nn.Linear):
    """A frozen Linear whose weight is stored as NF4 (+ double quantization): uint8 codes (a parameter
    that cannot require grad, so parameter counts see the weights) and the quantized absmax constants
    (buffers); `weight` is decoded from them at every call, so nothing can train it. A
    `torch.nn.Linear` subclass so that `peft` wraps it like any Linear (QLoRA)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, *, block_size: int = 64,
                 double_quant: bool = True, dq_block_size: int = 256):
        torch.nn.Module.__init__(self)  # no float weight parameter: the codes are the weight
        self.out_features, self.in_features = weight.shape
        s = nf4_encode(weight, block_size=block_size, double_quant=double_quant, dq_block_size=dq_block_size)
        self.shape, self.block_size, self.dq_block_size = s.shape, block_size, dq_block_size
        self.absmax_mean = s.absmax_mean
        self.codes = torch.nn.Parameter(s.codes, requires_grad=False)  # (out·in,) uint8: counted as weights
        self.register_buffer("absmax", s.absmax)  # None with double quantization
        self.register_buffer("absmax_codes", s.absmax_codes)
        self.register_buffer("absmax_scale", s.absmax_scale)
        self.bias = None if bias is None else torch.nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.bits = s.bits()

    def state(self) -> NF4Tensor:
        return NF4Tensor(self.shape, self.codes, self.block_size, self.absmax, self.absmax_codes,
                         self.absmax_scale, self.absmax_mean, self.dq_block_size)

    @property
    def weight(self) -> torch.Tensor:
        return nf4_decode(self.state())  # (out, in) float32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x, self.weight.to(x.dtype),
                                          None if self.bias is None else self.bias.to(x.dtype))
