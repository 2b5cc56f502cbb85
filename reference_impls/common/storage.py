"""True storage cost of a compressed model, in bits.

Conventions (stated once so every method counts the same way):
- an uncompressed weight costs 16 bits (fp16/bf16 storage, the baseline every paper compares to);
- a quantized weight costs `bits`; each quantization group stores a 16-bit scale per output row,
  plus a `bits`-bit integer zero point when asymmetric (symmetric grids have a fixed zero);
- a low-rank matrix stores its two factors, rank·(out + in) values at their bit width (16 unless the
  factors are quantized); `rank_for_ratio` turns DESIGN's `--ratio` into that rank;
- a sparse matrix stores its kept values at their own bit width plus the arrays of its smallest real
  encoding (bitmask, CSR, or N:M position metadata; `sparse_storage`), counted as encoded;
- `bits_per_weight` is over the compressed layers' weights (the figure papers quote, e.g. 4-bit
  g128 ≈ 4.16); `model_bits_per_param` spreads everything, embeddings and norms at 16 bits, over all
  parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

SCALE_BITS = 16
DENSE_BITS = 16


def group_width(group_size: int, in_features: int, *, must_divide: bool = False) -> int:
    """Input columns per quantization group: `group_size`, or the whole row for -1 (or a size that
    covers the row). The one check of `--group-size` every quantizer uses: 0 and other non-positive
    values are errors, and so is a size not dividing the row where a method's groups must tile it."""
    if (
        isinstance(group_size, bool)
        or not isinstance(group_size, int)
        or (group_size < 1 and group_size != -1)
    ):
        raise ValueError(f"--group-size must be -1 (whole row) or a positive integer, got {group_size!r}")
    width = in_features if group_size == -1 else min(group_size, in_features)
    if must_divide and in_features % width:
        raise ValueError(f"--group-size {group_size} must divide the {in_features} input features")
    return width


def n_groups(in_features: int, group_size: int) -> int:
    return math.ceil(in_features / group_width(group_size, in_features))


def quantized_bits(
    out_features: int, in_features: int, *, bits: int, group_size: int = -1, sym: bool = False
) -> int:
    """Bits to store one quantized (out, in) matrix: payload + per-group scales (+ zero points)."""
    groups = n_groups(in_features, group_size)
    overhead = out_features * groups * (SCALE_BITS + (0 if sym else bits))
    return out_features * in_features * bits + overhead


def rank_for_ratio(out_features: int, in_features: int, ratio: float) -> int:
    """Rank whose factors keep `ratio` of an (out, in) matrix's parameters: int(m·n·r / (m + n)), the
    truncation of the SVD-LLM and ASVD repositories (DESIGN §6 `--ratio`)."""
    if not 0 < ratio <= 1:
        raise ValueError(f"--ratio must be in (0, 1], got {ratio}")
    return int(out_features * in_features * ratio / (out_features + in_features))


def low_rank_bits(out_features: int, in_features: int, *, rank: int, bits: int = DENSE_BITS) -> int:
    """Bits of the factors A (out, rank) and B (rank, in) of an (out, in) matrix."""
    return rank * (out_features + in_features) * bits


@dataclass(frozen=True)
class Parts:
    """What one entry's bits are made of, so that compositions can combine entries exactly
    (`reference_impls.common.compose`): `n_values` stored values at `value_bits` each, the arrays of a
    sparse encoding other than its values (`index_bits`: bitmask, CSR indices, N:M metadata) and
    `extra_bits` (scales, zero points, group indices)."""

    n_values: int
    value_bits: int
    index_bits: int = 0
    extra_bits: int = 0

    @property
    def bits(self) -> int:
        return self.n_values * self.value_bits + self.index_bits + self.extra_bits


@dataclass
class StorageLedger:
    """Per-layer record of what each compressed matrix costs; methods add one entry per layer."""

    layers: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (n_weights, bits)
    parts: dict[str, Parts] = field(default_factory=dict)  # name -> its breakdown, where known
    # name -> parameters of the entry the model still holds: n_weights, except after structured pruning
    # (a smaller matrix, or none) — what `model_bits` must not count a second time as dense
    held: dict[str, int] = field(default_factory=dict)

    def add(self, name: str, n_weights: int, bits: int, *, value_bits: int | None = None,
            parts: Parts | None = None, held: int | None = None) -> None:
        """`value_bits`: every one of the `n_weights` is stored at this width, the rest of `bits` is
        overhead (scales, zeros); or the breakdown as `parts`. Either lets a composition combine it.
        `held`: the parameters of this entry left in the model (default `n_weights`; a structurally
        pruned matrix holds fewer, a removed layer none)."""
        self.layers[name] = (n_weights, bits)
        self.held[name] = n_weights if held is None else held
        if parts is None and value_bits is not None:
            parts = Parts(n_weights, value_bits, 0, bits - n_weights * value_bits)
        if parts is not None:
            self.parts[name] = parts
        else:
            self.parts.pop(name, None)

    def add_quantized(self, name: str, out_features: int, in_features: int, *, bits: int,
                      group_size: int = -1, sym: bool = False) -> None:
        self.add(name, out_features * in_features,
                 quantized_bits(out_features, in_features, bits=bits, group_size=group_size, sym=sym),
                 value_bits=bits)

    def add_low_rank(self, name: str, out_features: int, in_features: int, *, rank: int,
                     bits: int = DENSE_BITS, extra_bits: int = 0) -> None:
        """Record an (out, in) matrix stored as two rank-`rank` factors (plus `extra_bits`, e.g. the
        quantized base a low-rank correction is added to, or a sparse residual)."""
        self.add(name, out_features * in_features,
                 low_rank_bits(out_features, in_features, rank=rank, bits=bits) + extra_bits)

    def add_sparse(self, name: str, weight, *, prune_n: int = 0, prune_m: int = 0, perm=None,
                   value_bits: int = DENSE_BITS, extra_bits: int = 0) -> str:
        """Record the real storage of a pruned (out, in) matrix; returns the format chosen.

        The smallest encoding of `sparse_storage` (bitmask, CSR, or N:M when `prune_n` is set, with
        an optional input permutation `perm`), its mask/index arrays counted as encoded; kept values
        at `value_bits` each (16, or a quantizer's bit width, whose scales and zeros come in as
        `extra_bits`); dense storage when no encoding is smaller."""
        from reference_impls.common.sparse_storage import best_encoding

        enc = best_encoding(weight, nm=(prune_n, prune_m) if prune_n else None, perm=perm)
        if enc is None:
            self.add(name, weight.numel(), weight.numel() * value_bits + extra_bits,
                     parts=Parts(weight.numel(), value_bits, 0, extra_bits))
            return "dense"
        values = enc.arrays["values"]
        parts = Parts(values.size, value_bits, enc.bits - values.nbytes * 8, extra_bits)
        self.add(name, weight.numel(), parts.bits, parts=parts)
        return enc.format

    @property
    def n_weights(self) -> int:
        return sum(n for n, _ in self.layers.values())

    @property
    def bits(self) -> int:
        return sum(b for _, b in self.layers.values())

    def bits_per_weight(self) -> float:
        """Over the compressed layers; 16.0 when nothing was compressed."""
        return self.bits / self.n_weights if self.n_weights else float(DENSE_BITS)

    def model_bits(self, total_params: int) -> int:
        """All parameters: ledger entries at their cost, everything else dense. `total_params` counts
        the model as it is now, so the entries' parameters it still holds are taken out of it."""
        return self.bits + (total_params - sum(self.held.values())) * DENSE_BITS
