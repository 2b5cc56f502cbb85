"""BitNet b1.58: absmean ternary weights exactly {−1, 0, +1}·γ, per-token absmax int8 activations,
straight-through gradients, and a tiny from-scratch run beside a same-size full-precision model."""

import math

import pytest
import torch

import reference_impls.qat.bitnet as bitnet
from reference_impls.qat.bitnet import BitLinear, absmax_int8, absmean_ternary
from tests.qat_fixtures import counting_text, tiny_ctx


def test_absmean_ternary_by_hand():
    w = torch.tensor([[0.5, -1.5], [0.1, 2.0]])
    t, gamma = absmean_ternary(w)
    assert gamma == pytest.approx((0.5 + 1.5 + 0.1 + 2.0) / 4)  # γ = mean|W| = 1.025
    # W/γ = [0.49, -1.46, 0.10, 1.95] -> round -> [0, -1, 0, 2] -> clip -> [0, -1, 0, 1]
    assert t.tolist() == [[0.0, -1.0], [0.0, 1.0]]
    big = torch.randn(64, 96, generator=torch.Generator().manual_seed(0))
    t, gamma = absmean_ternary(big)
    assert set(t.unique().tolist()) == {-1.0, 0.0, 1.0}
    torch.testing.assert_close(gamma, big.abs().mean())


def test_absmax_int8_per_token_by_hand():
    x = torch.tensor([[1.0, -0.5, 0.25], [0.0, 0.0, 2.0]])
    y = absmax_int8(x)
    # token 0: scale 127/1: 127, -63.5 -> -64 (half to even), 31.75 -> 32; token 1: scale 127/2
    torch.testing.assert_close(y[0], torch.tensor([127.0, -64.0, 32.0]) / 127)
    torch.testing.assert_close(y[1], torch.tensor([0.0, 0.0, 2.0]))
    x = torch.randn(5, 33, generator=torch.Generator().manual_seed(0))
    codes = absmax_int8(x) * 127 / x.abs().amax(-1, keepdim=True)  # back to the integer levels
    torch.testing.assert_close(codes, codes.round(), rtol=0, atol=1e-4)
    assert codes.abs().max() == pytest.approx(127)


def test_bitlinear_forward_and_straight_through_gradients():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(6, 8, generator=g)
    layer = BitLinear(w)
    x = torch.randn(3, 8, generator=g, requires_grad=True)
    y = layer(x)
    t, gamma = absmean_ternary(w)
    xn = torch.nn.functional.rms_norm(x.detach(), (8,), eps=1e-6)
    torch.testing.assert_close(y, absmax_int8(xn) @ (t * gamma).t())
    up = torch.randn(3, 6, generator=g)
    (y * up).sum().backward()
    # STE: ∂L/∂W = upᵀ · x̃ (the quantized input), as if W̃ were W
    torch.testing.assert_close(layer.weight.grad, up.t() @ absmax_int8(xn))


def test_bitnet_tiny_from_scratch(monkeypatch):
    ctx = tiny_ctx()
    monkeypatch.setattr(bitnet, "training_windows", lambda loaded, seq_len: counting_text(64, seq_len))
    metrics = bitnet.run_bitnet(ctx, hidden_size=64, layers=1, max_steps=40, time_budget=0, lr=1e-2,
                                seq_len=32, batch_size=4)
    model = ctx.loaded.model
    layers = [m for m in model.modules() if isinstance(m, BitLinear)]
    assert len(layers) == 7
    for m in layers:
        t, _ = m.ternary()
        assert set(t.unique().tolist()) <= {-1.0, 0.0, 1.0}
    assert metrics["train_loss_last"] < metrics["train_loss_first"]
    assert metrics["train_fp_loss_last"] < metrics["train_fp_loss_first"]
    assert metrics["train_steps"] == metrics["train_fp_steps"] == 40
    assert ctx.heldout_perplexity() < metrics["perplexity_before"]
    n = sum(m.weight.numel() for m in layers)
    assert ctx.ledger.bits_per_weight() == pytest.approx(
        sum(8 * math.ceil(m.weight.numel() / 5) + 16 for m in layers) / n)
