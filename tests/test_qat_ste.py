"""STE QAT: the shared grid equals RTN's, STE gradients (identity inside the clip range, zero outside),
integer codes after training, and a short run that lowers the loss."""

import pytest
import torch

from reference_impls.common.qat import (
    QuantLinear,
    dequantize,
    fake_quantize_ste,
    minmax_grid,
    quantize_codes,
    ste_round,
)
from reference_impls.qat.ste_qat import run_ste_qat
from reference_impls.quantization.rtn import rtn_quantize
from tests.qat_fixtures import tiny_ctx


@pytest.mark.parametrize("bits,group_size,sym", [(3, 16, False), (2, -1, False), (4, 32, True), (2, 8, True)])
def test_shared_grid_is_rtn(bits, group_size, sym):
    w = torch.randn(24, 64, generator=torch.Generator().manual_seed(bits))
    scale, zero = minmax_grid(w, bits=bits, group_size=group_size, sym=sym)
    ours = dequantize(quantize_codes(w, scale, zero, bits=bits), scale, zero)
    torch.testing.assert_close(ours, rtn_quantize(w, bits=bits, group_size=group_size, sym=sym),
                               rtol=0, atol=1e-6)
    # the STE fake quantizer computes the same value in the forward pass
    torch.testing.assert_close(fake_quantize_ste(w, scale, zero, bits=bits), ours, rtol=0, atol=1e-6)


def test_ste_round_forward_rounds_backward_identity():
    x = torch.tensor([-1.6, -0.5, 0.2, 0.5, 1.5, 2.49], requires_grad=True)
    y = ste_round(x)
    assert torch.equal(y.detach(), torch.round(x.detach()))
    y.pow(2).sum().backward()
    assert torch.equal(x.grad, 2 * torch.round(x.detach()))  # d(round(x)^2)/dx with round' = 1


def test_ste_gradient_is_identity_inside_clip_range_zero_outside():
    bits, maxq = 2, 3
    # one group of 4 inputs per row; the grid is fixed from a narrower weight, so some entries fall outside
    scale = torch.tensor([[0.5], [0.25]])
    zero = torch.tensor([[1.0], [2.0]])
    w = torch.tensor([[-1.0, -0.3, 0.4, 1.3], [-0.9, -0.2, 0.1, 0.7]], requires_grad=True)
    wq = fake_quantize_ste(w, scale, zero, bits=bits)
    upstream = torch.arange(1.0, 9.0).reshape(2, 4)
    (wq * upstream).sum().backward()
    # by hand (float64): level = round(w/s) + z; inside iff 0 <= level <= maxq
    level = torch.round(w.detach().double() / scale.double()) + zero.double()
    # row 0: round(-2)+1=-1 (out), round(-0.6)+1=0, round(0.8)+1=2, round(2.6)+1=4 (out)
    # row 1: round(-3.6)+2=-2 (out), round(-0.8)+2=1, round(0.4)+2=2, round(2.8)+2=5 (out)
    assert level.tolist() == [[-1, 0, 2, 4], [-2, 1, 2, 5]]
    inside = ((level >= 0) & (level <= maxq)).float()
    assert torch.equal(w.grad, upstream * inside)
    assert w.grad[0, 0] == 0 and w.grad[0, 1] == 2 and w.grad[1, 3] == 0
    # forward: clipped entries sit on the end levels
    assert torch.allclose(wq.detach()[0], torch.tensor([-0.5, -0.5, 0.5, 1.0]))


def test_ste_qat_trains_then_stores_integer_codes():
    ctx = tiny_ctx()
    metrics = run_ste_qat(ctx, bits=2, group_size=16, max_steps=30, time_budget=0, lr=3e-3)
    linears = [m for m in ctx.model.modules() if isinstance(m, QuantLinear)]
    assert len(linears) == 2 * 7  # every block linear of the 2-layer Llama
    for m in linears:
        assert m.codes.dtype == torch.uint8 and int(m.codes.max()) <= 3
        assert not any(p.requires_grad for p in m.parameters())
    assert metrics["train_steps"] == 30 and metrics["trainable_params"] > 0
    assert metrics["train_loss_last"] < metrics["train_loss_first"]
    assert ctx.heldout_perplexity() < metrics["perplexity_before"]
    # 2 bits + a 16-bit scale and 2-bit zero per 16 inputs
    assert ctx.ledger.bits_per_weight() == pytest.approx(2 + 18 / 16)
