"""RTN: hand-computed grids, grid invariants, SQNR bounds, and 8-bit RTN on the real causal LM."""

from __future__ import annotations

import math

import pytest
import torch

from reference_impls.quantization.rtn import minmax_params, rtn, rtn_quantize


def sqnr_db(w: torch.Tensor, q: torch.Tensor) -> float:
    return 10 * math.log10(w.pow(2).sum().item() / (w - q).pow(2).sum().item())


def test_asymmetric_two_bit_by_hand():
    # min -0.6, max 1.5 -> scale 2.1/3 = 0.7, zero = round(0.6/0.7) = 1; grid {-0.7, 0, 0.7, 1.4}
    w = torch.tensor([[-0.6, 0.1, 0.7, 1.5]])
    q = rtn(w, bits=2)
    assert q.scale.item() == pytest.approx(0.7)
    assert q.zero.item() == 1
    torch.testing.assert_close(q.weight, torch.tensor([[-0.7, 0.0, 0.7, 1.4]]))


def test_symmetric_three_bit_uses_the_official_grid():
    # scale = 2*max|w|/maxq = 2.8/7 = 0.4, zero = (7+1)/2 = 4. The official grid spans -4..+3 steps,
    # so +max|w| (3.5 steps, rounded to 4 and clamped to 7) lands on 3 steps = 1.2.
    w = torch.tensor([[-1.4, -0.5, 0.3, 1.4]])
    q = rtn(w, bits=3, sym=True)
    assert q.scale.item() == pytest.approx(0.4)
    assert q.zero.item() == 4
    torch.testing.assert_close(q.weight, torch.tensor([[-1.6, -0.4, 0.4, 1.2]]))


def test_groups_fit_their_own_range():
    w = torch.tensor([[0.0, 1.0, 2.0, 3.0, 0.0, 2.0, 4.0, 6.0]])
    # Two groups of 4: scales 1 and 2, both ranges exactly representable at 2 bits.
    torch.testing.assert_close(rtn_quantize(w, bits=2, group_size=4), w)
    # One grid over the row: scale 2, so 1 -> 0 (0.5 rounds to even) and 3 -> 4.
    torch.testing.assert_close(
        rtn_quantize(w, bits=2), torch.tensor([[0.0, 0.0, 2.0, 4.0, 0.0, 2.0, 4.0, 6.0]])
    )


def test_zero_row_and_positive_row():
    w = torch.tensor([[0.0, 0.0, 0.0], [0.5, 1.0, 2.0]])
    scale, zero = minmax_params(w, bits=4, sym=False)
    assert scale[0].item() == pytest.approx(2 / 15)  # an all-zero row gets the range [-1, 1]
    assert zero[1].item() == 0  # the range always contains 0
    assert rtn_quantize(w, bits=4)[0].abs().max().item() == 0.0


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("group_size", [-1, 32])
@pytest.mark.parametrize("sym", [False, True])
def test_every_group_lies_on_its_reported_grid(bits, group_size, sym):
    torch.manual_seed(bits)
    w = torch.randn(16, 96) * torch.rand(16, 1) + 0.1 * torch.randn(16, 1)
    q = rtn(w, bits=bits, group_size=group_size, sym=sym)
    maxq = 2**bits - 1
    scale = q.scale[:, q.g_idx]  # (out, in)
    zero = q.zero[:, q.g_idx]
    codes = q.weight / scale + zero
    torch.testing.assert_close(codes, codes.round(), atol=1e-3, rtol=0)
    assert codes.round().min() >= 0 and codes.round().max() <= maxq
    for g in q.g_idx.unique():
        cols = q.weight[:, q.g_idx == g]
        assert max(len(row.unique()) for row in cols) <= 2**bits
    # Rounding to the nearest grid point: the error never exceeds half a step (clamping aside).
    inside = (codes.round() > 0) & (codes.round() < maxq)
    assert ((w - q.weight).abs()[inside] <= scale[inside] / 2 + 1e-6).all()


def test_sqnr_on_gaussian_weights():
    torch.manual_seed(0)
    w = torch.randn(256, 1024)
    assert sqnr_db(w, rtn_quantize(w, bits=8)) > 30
    assert sqnr_db(w, rtn_quantize(w, bits=4)) > 15
    # Smaller groups track the local range: strictly better than one grid per row.
    assert sqnr_db(w, rtn_quantize(w, bits=4, group_size=128)) > sqnr_db(w, rtn_quantize(w, bits=4))


def test_shape_and_dtype_are_preserved():
    w = torch.randn(8, 64, dtype=torch.bfloat16)
    q = rtn_quantize(w, bits=4, group_size=32)
    assert q.dtype == torch.bfloat16 and q.shape == w.shape


@pytest.mark.slow
def test_rtn_8bit_on_the_causal_lm_is_within_one_percent():
    from reference_impls.common.adapters import get_weight
    from reference_impls.common.models import load_model
    from reference_impls.common.runner import run_method

    rec = run_method("rtn", model="causal", eval_windows=48, options={"bits": 8})
    m = rec["metrics"]
    assert m["perplexity"] == pytest.approx(m["perplexity_fp"], rel=0.01)
    # Storage by hand: 8 bits per weight plus one 16-bit scale and 8-bit zero per output row.
    loaded = load_model("causal")
    shapes = [get_weight(lin).shape for blk in loaded.adapter.blocks(loaded.model)
              for lin in loaded.adapter.linears(blk).values()]
    n = sum(o * i for o, i in shapes)
    assert rec["bits_per_weight"] == pytest.approx((8 * n + sum(o * 24 for o, _ in shapes)) / n)
