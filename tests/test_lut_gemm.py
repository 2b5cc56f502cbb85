"""LUT-GEMM: BCQ by hand, codes reconstruct the weight, the LUT product equals the de-quantized one."""

import pytest
import torch
from lowbit_fixtures import tiny_ctx

from reference_impls.quantization.lut_gemm import (
    bcq_fit,
    bcq_quantize,
    build_lut,
    chunk_patterns,
    lut_matmul,
    run_lut_gemm,
)
from reference_impls.quantization.rtn import rtn_quantize


def test_one_bit_greedy_by_hand():
    w = torch.tensor([[1.0, -3.0, 2.0, -2.0]], dtype=torch.float64)
    alpha, B, z = bcq_fit(w, q=1, iters=0, offset=False)
    assert torch.equal(B[0, :, 0], torch.tensor([1.0, -1, 1, -1], dtype=torch.float64))
    assert alpha.item() == 2.0 and z.item() == 0.0  # mean |w|, the least-squares α for fixed signs


def test_codes_reconstruct_the_weight_and_refinement_helps():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(32, 256, generator=g, dtype=torch.float64)
    for bits in (2, 3):
        deq, alpha, B, z = bcq_quantize(W, bits=bits, group_size=64)
        assert set(B.unique().tolist()) == {-1.0, 1.0} and alpha.shape == (32, 4, bits)
        rebuilt = (B * alpha.repeat_interleave(64, 1)).sum(-1) + z.repeat_interleave(64, 1)
        assert torch.allclose(rebuilt, deq)
        assert max(r.unique().numel() for r in deq[:, :64]) <= 2**bits
        greedy = bcq_quantize(W, bits=bits, group_size=64, iters=0)[0]
        assert (W - deq).pow(2).mean() < (W - greedy).pow(2).mean()
        # non-uniform levels beat the uniform grid of the same group size at 2-3 bits
        assert (W - deq).pow(2).mean() < (W - rtn_quantize(W, bits=bits, group_size=64)).pow(2).mean()


def test_lut_by_hand():
    x = torch.arange(1.0, 9.0, dtype=torch.float64)[None]  # one chunk: 1..8
    lut = build_lut(x)
    assert lut.shape == (1, 1, 256)
    assert lut[0, 0, 0] == -36 and lut[0, 0, 255] == 36
    assert lut[0, 0, 0b101] == 1 - 2 + 3 - 4 - 5 - 6 - 7 - 8  # bits 0 and 2 set: inputs 1 and 3 positive


@pytest.mark.parametrize("bits,offset", [(1, False), (2, True), (3, True), (4, False)])
def test_lut_product_equals_dequantized_matmul(bits, offset):
    g = torch.Generator().manual_seed(bits)
    W = torch.randn(48, 256, generator=g, dtype=torch.float64)
    x = torch.randn(5, 256, generator=g, dtype=torch.float64)
    deq, alpha, B, z = bcq_quantize(W, bits=bits, group_size=128, offset=offset)
    y = lut_matmul(x, alpha, chunk_patterns(B), z, group_size=128)
    assert torch.allclose(y, x @ deq.t(), rtol=1e-10, atol=1e-10)


def test_model_entry_on_tiny_llama(monkeypatch):
    import reference_impls.quantization.lut_gemm as lg

    monkeypatch.setattr(lg, "lut_timing", lambda **kw: {"stub": True})  # timing is measured by the bench
    ctx = tiny_ctx()
    run_lut_gemm(ctx, bits=2, group_size=32, offset=True, iters=3)
    assert ctx.ledger.bits_per_weight() == pytest.approx(2 + 3 * 16 / 32)
    with pytest.raises(ValueError, match="--group-size"):
        run_lut_gemm(tiny_ctx(), bits=2, group_size=12, offset=True, iters=3)
