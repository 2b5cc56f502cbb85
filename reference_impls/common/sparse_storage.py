"""Real compressed storage for pruned weights, counted in bits from the encoded arrays themselves.

Each encoder builds the arrays a deployment would store, and a matching decoder rebuilds the dense
matrix from them (the tests check the round trip bit for bit), so the size reported is the size of
something that works, not a formula:
- bitmask: one bit per weight (packed) plus the kept values;
- CSR: row pointers and column indices in the smallest unsigned integer type that holds them, plus
  the kept values;
- N:M: the kept values, (rows, in·(M-N)/M), plus each kept value's position in its group in
  ceil(log2 M) bits, packed (2 bits per kept value for 2:4: the metadata of NVIDIA's sparse tensor
  cores), plus an optional input permutation (RIA's channel reallocation);
- structured pruning needs none of this: the matrices are physically smaller (`dense_bits`).
`storage.StorageLedger.add_sparse` records the smallest of these for a pruned matrix.
Values are stored in `value_dtype` (float16 by default, the storage type of the models the
literature prunes); `bits_per_weight` divides by the dense element count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Encoding:
    format: str
    shape: tuple[int, int]
    arrays: dict[str, np.ndarray]

    @property
    def bits(self) -> int:
        return sum(a.nbytes * 8 for a in self.arrays.values())

    @property
    def bits_per_weight(self) -> float:
        return self.bits / (self.shape[0] * self.shape[1])


def _uint_for(max_value: int) -> np.dtype:
    for dtype in (np.uint8, np.uint16, np.uint32, np.uint64):
        if max_value <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise ValueError(max_value)


def _values(W: torch.Tensor, keep: torch.Tensor, value_dtype: torch.dtype) -> np.ndarray:
    return W[keep].to(value_dtype).view(torch.int16 if value_dtype.itemsize == 2 else torch.int32).numpy()


def _restore_values(raw: np.ndarray, value_dtype: torch.dtype) -> torch.Tensor:
    return torch.from_numpy(raw.copy()).view(value_dtype)


def dense_bits(W: torch.Tensor, value_dtype: torch.dtype = torch.float16) -> int:
    return W.numel() * value_dtype.itemsize * 8


def encode_bitmask(W: torch.Tensor, value_dtype: torch.dtype = torch.float16) -> Encoding:
    keep = W != 0
    mask = np.packbits(keep.numpy().astype(np.uint8).ravel())
    return Encoding("bitmask", tuple(W.shape), {"mask": mask, "values": _values(W, keep, value_dtype)})


def decode_bitmask(enc: Encoding, value_dtype: torch.dtype = torch.float16) -> torch.Tensor:
    rows, cols = enc.shape
    keep = torch.from_numpy(np.unpackbits(enc.arrays["mask"], count=rows * cols).astype(bool)).view(
        rows, cols
    )
    W = torch.zeros(rows, cols, dtype=value_dtype)
    W[keep] = _restore_values(enc.arrays["values"], value_dtype)
    return W


def encode_csr(W: torch.Tensor, value_dtype: torch.dtype = torch.float16) -> Encoding:
    keep = W != 0
    counts = keep.sum(dim=1).numpy()
    crow = np.concatenate([[0], np.cumsum(counts)]).astype(_uint_for(int(keep.sum())))
    col = keep.nonzero()[:, 1].numpy().astype(_uint_for(W.shape[1] - 1))
    return Encoding(
        "csr", tuple(W.shape), {"crow": crow, "col": col, "values": _values(W, keep, value_dtype)}
    )


def decode_csr(enc: Encoding, value_dtype: torch.dtype = torch.float16) -> torch.Tensor:
    rows, cols = enc.shape
    crow = enc.arrays["crow"].astype(np.int64)
    row = np.repeat(np.arange(rows), np.diff(crow))
    W = torch.zeros(rows, cols, dtype=value_dtype)
    W[torch.from_numpy(row), torch.from_numpy(enc.arrays["col"].astype(np.int64))] = _restore_values(
        enc.arrays["values"], value_dtype
    )
    return W


def _pack(indices: np.ndarray, bits: int) -> np.ndarray:
    unpacked = np.unpackbits(indices.astype(np.uint8).reshape(-1, 1), axis=1)[:, 8 - bits :]
    return np.packbits(unpacked.ravel())


def _unpack(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    flat = np.unpackbits(packed, count=count * bits).reshape(count, bits)
    return (flat * (1 << np.arange(bits - 1, -1, -1))).sum(axis=1)


def encode_nm(
    W: torch.Tensor,
    prune_n: int,
    prune_m: int,
    value_dtype: torch.dtype = torch.float16,
    perm: torch.Tensor | None = None,
) -> Encoding:
    """N:M storage of W whose columns, taken in order `perm` (or as they are), have at most M-N
    nonzeros per group of M; groups with fewer nonzeros store explicit zeros, as the hardware does."""
    Wp = W if perm is None else W[:, perm]
    rows, cols = Wp.shape
    keep_per_group = prune_m - prune_n
    groups = Wp.reshape(rows, cols // prune_m, prune_m)  # (out, in/M, M)
    if int((groups != 0).sum(-1).max()) > keep_per_group:
        raise ValueError(f"matrix is not {prune_n}:{prune_m} sparse")
    # positions of the kept entries: nonzeros first, ties (zeros) by position
    order = torch.sort((groups == 0).to(torch.int8), dim=2, stable=True).indices[..., :keep_per_group]
    position = torch.sort(order, dim=2).values  # (out, in/M, M-N), ascending inside the group
    arrays = {
        "values": _values(
            groups.gather(2, position), torch.ones_like(position, dtype=torch.bool), value_dtype
        ),
        "meta": _pack(position.numpy().ravel(), max(1, math.ceil(math.log2(prune_m)))),
    }
    if perm is not None:
        arrays["perm"] = perm.numpy().astype(_uint_for(cols - 1))
    return Encoding(f"{prune_n}:{prune_m}", (rows, cols), arrays)


def decode_nm(enc: Encoding, value_dtype: torch.dtype = torch.float16) -> torch.Tensor:
    rows, cols = enc.shape
    prune_n, prune_m = (int(x) for x in enc.format.split(":"))
    keep_per_group = prune_m - prune_n
    count = rows * cols // prune_m * keep_per_group
    position = torch.from_numpy(_unpack(enc.arrays["meta"], max(1, math.ceil(math.log2(prune_m))), count))
    values = _restore_values(enc.arrays["values"], value_dtype)
    groups = torch.zeros(rows, cols // prune_m, prune_m, dtype=value_dtype)
    groups.scatter_(2, position.view(rows, -1, keep_per_group), values.view(rows, -1, keep_per_group))
    W = groups.reshape(rows, cols)
    if "perm" in enc.arrays:
        out = torch.empty_like(W)
        out[:, torch.from_numpy(enc.arrays["perm"].astype(np.int64))] = W
        W = out
    return W


def best_encoding(
    W: torch.Tensor, value_dtype: torch.dtype = torch.float16, nm: tuple[int, int] | None = None, perm=None
) -> Encoding | None:
    """The smallest of bitmask, CSR and (when the pattern is N:M) N:M; None when dense is smaller."""
    W = W.detach().cpu()
    candidates = [encode_bitmask(W, value_dtype), encode_csr(W, value_dtype)]
    if nm is not None and nm[0]:  # first, so a tie goes to the format sparse tensor cores run
        candidates.insert(0, encode_nm(W, nm[0], nm[1], value_dtype, perm))
    best = min(candidates, key=lambda e: e.bits)
    return best if best.bits < dense_bits(W, value_dtype) else None
