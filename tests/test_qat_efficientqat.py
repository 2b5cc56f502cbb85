"""EfficientQAT: Block-AP lowers each block's reconstruction error below RTN's on the same inputs and
learns the grid, E2E-QP then moves only the step sizes (codes and zeros frozen bit for bit)."""

import torch

from reference_impls.common.layerwise import block_linears
from reference_impls.common.qat import QuantLinear
from reference_impls.qat.efficientqat import block_ap, run_efficientqat
from tests.qat_fixtures import tiny_ctx


def test_block_ap_beats_rtn_reconstruction_on_the_same_block():
    ctx = tiny_ctx()
    seen = {}

    def process(bc):
        if bc.index:
            return
        import copy

        from reference_impls.common.qat import dequantize, minmax_grid, quantize_codes

        target = bc.run()
        rtn = copy.deepcopy(bc.block)
        for _name, m in bc.adapter.linears(rtn).items():
            w = m.weight.detach()
            s, z = minmax_grid(w, bits=2, group_size=16)
            m.weight.data.copy_(dequantize(quantize_codes(w, s, z, bits=2), s, z))
        err_rtn = sum(float((a - b).pow(2).mean()) for a, b in zip(bc.run(rtn), target, strict=True))
        block_ap(bc, bits=2, group_size=16, steps=60, lr=5e-3, seed=0)
        err_ap = sum(float((a - b).pow(2).mean()) for a, b in zip(bc.run(), target, strict=True))
        seen.update(rtn=err_rtn, ap=err_ap, kinds={type(m) for m in bc.linears.values()})

    ctx.walk(process, stats=())
    assert seen["ap"] < 0.8 * seen["rtn"]
    assert seen["kinds"] == {QuantLinear}


def test_e2e_qp_trains_scales_only(monkeypatch):
    import reference_impls.qat.efficientqat as eq

    ctx = tiny_ctx()
    codes = {}
    original = eq.recover

    def spy(c, params, loss_fn, **kw):  # the state Block-AP hands to E2E-QP
        for name, m in block_linears(c.model, c.adapter):
            codes[name] = (m.codes.clone(), m.zero.detach().clone(), m.scale.detach().clone())
        return original(c, params, loss_fn, **kw)

    monkeypatch.setattr(eq, "recover", spy)
    metrics = run_efficientqat(ctx, bits=2, group_size=16, max_steps=20, time_budget=0, lr=1e-2,
                               block_steps=10, block_lr=5e-3)
    for name, m in block_linears(ctx.model, ctx.adapter):
        c, z, s = codes[name]
        assert torch.equal(m.codes, c) and torch.equal(m.zero, z)
        assert not torch.equal(m.scale, s)
    n_scales = sum(m.scale.numel() for _n, m in block_linears(ctx.model, ctx.adapter))
    assert metrics["trainable_params"] == n_scales
    assert metrics["train_loss_last"] < metrics["train_loss_first"]
    assert len(metrics["block_ap_loss_last"]) == 2
