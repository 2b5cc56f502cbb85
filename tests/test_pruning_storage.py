"""Sparse storage formats: exact round trips, and sizes that match a count done by hand."""

from __future__ import annotations

import pytest
import torch

from reference_impls.common.sparse_storage import (
    best_encoding,
    decode_bitmask,
    decode_csr,
    decode_nm,
    encode_bitmask,
    encode_csr,
    encode_nm,
)
from reference_impls.pruning.magnitude import magnitude_prune


def weight(rows=32, cols=64, seed=0):
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed)).half()


def test_bitmask_round_trip_and_size():
    W = magnitude_prune(weight(), sparsity=0.5)
    enc = encode_bitmask(W)
    assert torch.equal(decode_bitmask(enc), W)
    assert enc.bits == 32 * 64 + 1024 * 16  # one bit per weight + fp16 kept values
    assert enc.bits_per_weight == pytest.approx(9.0)


def test_csr_round_trip_and_size():
    W = magnitude_prune(weight(), sparsity=0.9)
    enc = encode_csr(W)
    assert torch.equal(decode_csr(enc), W)
    nnz = int((W != 0).sum())
    # 33 row pointers (uint8 while nnz <= 255), one uint8 column index and one fp16 value per nonzero
    assert enc.bits == 33 * 8 + nnz * (8 + 16)
    assert best_encoding(W).format == "csr"
    assert best_encoding(magnitude_prune(weight(), sparsity=0.5)).format == "bitmask"
    assert best_encoding(weight()) is None  # dense is smallest


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8)])
def test_nm_round_trip_and_metadata_size(n, m):
    W = magnitude_prune(weight(), prune_n=n, prune_m=m)
    enc = encode_nm(W, n, m)
    assert torch.equal(decode_nm(enc), W)
    kept = 32 * 64 * (m - n) // m
    index_bits = {4: 2, 8: 3}[m]
    assert enc.bits == kept * 16 + -(-kept * index_bits // 8) * 8
    if (n, m) == (2, 4):
        assert enc.bits_per_weight == pytest.approx(9.0)  # 8 bits of values + 1 bit of metadata


def test_nm_with_permutation_round_trip():
    W = weight()
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(1))
    Wp = magnitude_prune(W[:, perm], prune_n=2, prune_m=4)
    restored = torch.empty_like(Wp)
    restored[:, perm] = Wp  # a matrix that is 2:4 only in the permuted order
    with pytest.raises(ValueError):
        encode_nm(restored, 2, 4)
    enc = encode_nm(restored, 2, 4, perm=perm)
    assert torch.equal(decode_nm(enc), restored)
    assert enc.arrays["perm"].nbytes == 64
