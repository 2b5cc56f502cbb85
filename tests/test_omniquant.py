"""OmniQuant (LWC): at σ = 1 it is RTN; the STE passes gradients; training lowers the block loss below RTN."""

import pytest
import torch
from lowbit_fixtures import tiny_ctx
from torch import nn

from reference_impls.common.layerwise import BlockContext
from reference_impls.common.training import TrainConfig
from reference_impls.quantization.omniquant import calibrate_block, lwc_quantize, round_ste, run_omniquant
from reference_impls.quantization.rtn import rtn_quantize


@pytest.mark.parametrize("bits,group_size", [(2, -1), (3, -1), (3, 32), (4, 64)])
def test_unclipped_lwc_is_rtn(bits, group_size):
    W = torch.randn(48, 128, generator=torch.Generator().manual_seed(bits))
    n = 48 * (1 if group_size == -1 else 128 // group_size)
    inf = torch.full((n,), float("inf"))  # σ(γ) = σ(β) = 1: the min-max range itself
    assert torch.allclose(lwc_quantize(W, inf, inf, bits=bits, group_size=group_size),
                          rtn_quantize(W, bits=bits, group_size=group_size), atol=1e-6)


def test_clipping_shrinks_the_range_and_gradients_flow():
    W = torch.randn(8, 32, generator=torch.Generator().manual_seed(0))
    gamma = torch.full((8,), 0.0, requires_grad=True)  # σ = 0.5: half the range
    beta = torch.full((8,), 0.0, requires_grad=True)
    q = lwc_quantize(W, gamma, beta, bits=3)
    half_step = 0.5 * (W.amax(1) - W.amin(1)) / 7 / 2  # the rounded zero point moves the grid by < h/2
    assert torch.all(q.amax(1) <= 0.5 * W.amax(1) + half_step + 1e-6)
    assert torch.all(q.amin(1) >= 0.5 * W.amin(1) - half_step - 1e-6)
    assert torch.all(q.amax(1) - q.amin(1) <= 0.5 * (W.amax(1) - W.amin(1)) + 1e-6)
    (q - W).pow(2).sum().backward()
    assert gamma.grad.abs().sum() > 0 and beta.grad.abs().sum() > 0
    x = torch.tensor([0.4, 1.6], requires_grad=True)
    round_ste(x).sum().backward()
    assert torch.equal(round_ste(x.detach()), torch.tensor([0.0, 2.0])) and torch.equal(x.grad, torch.ones(2))


def heavy_tailed_block(seed):
    g = torch.Generator().manual_seed(seed)
    block = nn.Sequential(nn.Linear(64, 48, bias=False))
    with torch.no_grad():  # Student-t weights: a few large ones stretch the min-max range
        block[0].weight.copy_(torch.distributions.StudentT(2.0).sample((48, 64)) * 0.05)
    xs = [torch.randn(4, 16, 64, generator=g) for _ in range(2)]
    return block, BlockContext(0, "b", block, None, {"0": block[0]}, {}, xs, [{}, {}])


def test_training_lowers_the_block_loss_below_rtn():
    torch.manual_seed(0)
    block, bctx = heavy_tailed_block(0)
    W = block[0].weight.detach().clone()
    ref = [x @ W.t() for x in bctx.inputs]
    rtn_loss = sum((x @ rtn_quantize(W, bits=2).t() - r).pow(2).mean() for x, r in zip(bctx.inputs, ref,
                                                                                      strict=True)) / 2
    cfg = TrainConfig(max_steps=40, lr=5e-2, weight_decay=0.0, warmup_steps=0, min_lr_ratio=1.0,
                      grad_clip=None, progress=False)
    m = calibrate_block(bctx, bits=2, group_size=-1, cfg=cfg)
    assert m["loss_trained"] < 0.97 * m["loss_init"]
    assert m["loss_trained"] < rtn_loss.item()
    assert isinstance(block[0], nn.Linear)  # the plain linear is back, holding Q(W)
    assert max(r.unique().numel() for r in block[0].weight) <= 4


def test_model_entry_on_tiny_llama():
    ctx = tiny_ctx()
    m = run_omniquant(ctx, bits=2, group_size=-1, max_steps=5, time_budget=0.0, lr=5e-2)
    assert m["steps_per_block"] == 5 and len(m["block_loss_trained"]) == 2
    w = ctx.model.model.layers[0].self_attn.q_proj.weight
    assert max(r.unique().numel() for r in w) <= 4  # the stored weight is on a 2-bit grid per row
    assert ctx.ledger.bits_per_weight() == pytest.approx(2 + 18 / 64, rel=0.2)
    with pytest.raises(ValueError, match="--bits"):
        run_omniquant(tiny_ctx(), bits=1, group_size=-1, max_steps=5, time_budget=0.0, lr=5e-2)
