"""Huffman coding (common/entropy) and the bf16 exponent coder: bit-exact round trips, Huffman's
entropy bound, hand-checked bit layout, and the model-level ledger."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reference_impls.common.entropy import entropy_bits, huffman_encode, mean_code_length
from reference_impls.encoding.exponent_coding import encode_bf16, join_bf16, run_exponent_coding, split_bf16


def test_huffman_hand_case_and_entropy_bound():
    # counts 8, 4, 2, 2 plus dahuffman's end-of-stream symbol (count 1); Huffman's merges by hand:
    # EOF+2 (or 3) = 3, then 2+3 = 5, 4+5 = 9, 8+9 = 17 -> lengths 1, 2, 3, 4 (and 4 for EOF)
    sym = np.array([0] * 8 + [1] * 4 + [2] * 2 + [3] * 2)
    coded = huffman_encode(sym, symbol_bits=8)
    assert entropy_bits(sym) == pytest.approx(1.75)
    assert sorted(length for length, _ in coded.codec.get_code_table().values()) == [1, 2, 3, 4, 4]
    assert mean_code_length(coded) == pytest.approx((8 * 1 + 4 * 2 + 2 * 3 + 2 * 4) / 16)
    np.testing.assert_array_equal(coded.decode(), sym)
    # skewed, non-dyadic source: H <= L < H + 1, and the stream's bytes are what the bits count
    rng = np.random.default_rng(0)
    sym = rng.geometric(0.35, size=20000)
    coded = huffman_encode(sym, symbol_bits=8)
    H, L = entropy_bits(sym), mean_code_length(coded)
    assert H <= L < H + 1
    assert len(coded.data) * 8 <= L * len(sym) + 64  # + EOF code and byte padding
    assert coded.bits == len(coded.data) * 8 + coded.codebook_bits
    np.testing.assert_array_equal(coded.decode(), sym)


def test_bf16_bit_layout_by_hand():
    x = torch.tensor([1.0, -2.0, 0.15625], dtype=torch.bfloat16)  # 0x3F80, 0xC000, 0x3E20
    exponent, sign_mantissa = split_bf16(x)
    assert exponent.tolist() == [127, 128, 124]
    assert sign_mantissa.tolist() == [0x00, 0x80, 0x20]  # sign in bit 7, mantissa in bits 6-0
    assert torch.equal(join_bf16(exponent, sign_mantissa, (3,)).view(torch.int16), x.view(torch.int16))


def test_round_trip_is_bit_exact_including_special_values():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(64, 96, generator=g) * 0.02
    w[0, :6] = torch.tensor([0.0, -0.0, float("inf"), float("-inf"), 1e-40, float("nan")])  # subnormal too
    coded = encode_bf16(w)
    ref = w.to(torch.bfloat16).view(torch.int16)
    assert torch.equal(coded.decode().view(torch.int16), ref)
    # ~8 raw bits + the exponent's entropy (within Huffman's 1 bit), far below 16
    exponent, _ = split_bf16(w)
    bits_per_weight = coded.bits / w.numel()
    H = entropy_bits(exponent)
    assert 8 + H <= bits_per_weight < 8 + H + 1 + coded.exponent.codebook_bits / w.numel() + 0.01
    assert bits_per_weight < 12


def test_model_level_round_trip_and_ledger():
    from reference_impls.common.adapters import adapter_for
    from reference_impls.common.models import LoadedModel, tiny_model
    from reference_impls.common.runner import RunContext

    model = tiny_model("llama")
    ctx = RunContext(loaded=LoadedModel("tiny", model, None, adapter_for(model), torch.device("cpu")))
    m = run_exponent_coding(ctx)
    assert m["round_trip_exact"]
    n2d = sum(p.numel() for p in model.parameters() if p.dim() >= 2)
    assert ctx.ledger.n_weights == m["coded_weights"] == n2d
    assert m["entropy_bound_bits_per_weight"] <= ctx.ledger.bits_per_weight() < 16
    # the model now holds exactly its bf16 weights
    assert all(torch.equal(p, p.to(torch.bfloat16).float()) for p in model.parameters())
