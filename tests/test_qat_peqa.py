"""PEQA: only scales train, every integer code and zero point is untouched bit for bit, the loss drops."""

import torch

from reference_impls.common.layerwise import block_linears
from reference_impls.common.qat import QuantLinear, dequantize, minmax_grid, quantize_codes
from reference_impls.qat.peqa import run_peqa
from tests.qat_fixtures import tiny_ctx


def test_peqa_trains_scales_only_codes_untouched():
    ctx = tiny_ctx()
    # the RTN start, computed independently from the original weights
    start = {}
    for name, lin in block_linears(ctx.model, ctx.adapter):
        w = lin.weight.detach().clone()
        scale, zero = minmax_grid(w, bits=2, group_size=16)
        start[name] = (quantize_codes(w, scale, zero, bits=2), scale, zero)
    embed_before = ctx.model.model.embed_tokens.weight.detach().clone()
    metrics = run_peqa(ctx, bits=2, group_size=16, max_steps=40, time_budget=0, lr=1e-2)
    modules = dict(block_linears(ctx.model, ctx.adapter))
    assert len(modules) == len(start) == 14
    for name, m in modules.items():
        codes, scale, zero = start[name]
        assert isinstance(m, QuantLinear) and m.codes.dtype == torch.uint8
        assert torch.equal(m.codes, codes)  # bit for bit
        assert torch.equal(m.zero, zero)
        assert not torch.equal(m.scale, scale)  # every layer's scales moved
        assert torch.equal(m.weight, dequantize(codes, m.scale, zero))  # still s·(q − z), same q and z
    assert torch.equal(ctx.model.model.embed_tokens.weight, embed_before)
    assert metrics["trainable_params"] == sum(m.scale.numel() for m in modules.values())
    assert metrics["train_loss_last"] < metrics["train_loss_first"]
    assert ctx.heldout_perplexity() < metrics["perplexity_before"]
