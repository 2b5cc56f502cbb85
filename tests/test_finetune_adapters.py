"""LoRA, DoRA, AdaLoRA (peft) on an RTN-quantized base: the base stays the quantized weight, only the
adapters train, storage counts them, the loss and held-out perplexity drop; AdaLoRA meets its budget."""

import pytest
import torch

from reference_impls.common.layerwise import block_linears
from reference_impls.common.qat import dequantize, minmax_grid, quantize_codes
from reference_impls.finetuning.adalora import run_adalora
from reference_impls.finetuning.dora import run_dora
from reference_impls.finetuning.lora import run_lora
from tests.qat_fixtures import tiny_ctx


def rtn_weights(ctx, bits, group_size):
    out = {}
    for name, lin in block_linears(ctx.model, ctx.adapter):
        w = lin.weight.detach().clone()
        scale, zero = minmax_grid(w, bits=bits, group_size=group_size)
        out[name] = dequantize(quantize_codes(w, scale, zero, bits=bits), scale, zero)
    return out


@pytest.mark.parametrize("run", [run_lora, run_dora])
def test_adapters_train_on_a_frozen_quantized_base(run):
    ctx = tiny_ctx()
    expected = rtn_weights(ctx, 2, 16)
    metrics = run(ctx, bits=2, group_size=16, max_steps=30, time_budget=0, lr=1e-2, rank=4)
    n_weights = adapters = 0
    for name, module in block_linears(ctx.model, ctx.adapter):
        assert torch.equal(module.base_layer.weight, expected[name])  # the base is the RTN weight, untouched
        assert not module.base_layer.weight.requires_grad
        assert module.lora_B["default"].weight.abs().sum() > 0  # B started at zero and trained
        n_weights += module.base_layer.weight.numel()
        adapters += sum(p.numel() for n, p in module.named_parameters() if "lora_" in n)
    assert metrics["trainable_params"] == adapters
    assert metrics["train_loss_last"] < metrics["train_loss_first"]
    assert ctx.heldout_perplexity() < metrics["perplexity_before"]
    # 2-bit codes + 16-bit scale + 2-bit zero per 16 inputs, plus the 16-bit adapters, over all stored values
    assert ctx.ledger.bits_per_weight() == pytest.approx(((2 + 18 / 16) * n_weights + 16 * adapters)
                                                         / (n_weights + adapters))
    params = sum(p.numel() for p in ctx.model.parameters())
    assert ctx.ledger.model_bits(params) == pytest.approx(  # every parameter counted once
        (2 + 18 / 16) * n_weights + 16 * adapters + 16 * (params - n_weights - adapters))


def test_dora_magnitude_starts_at_the_quantized_row_norms():
    from reference_impls.common.qat import rtn_base
    from reference_impls.common.training import add_lora

    ctx = tiny_ctx()
    rtn_base(ctx, bits=3, group_size=16)
    peft_model = add_lora(ctx.model, rank=4, use_dora=True)
    for _name, module in block_linears(peft_model.base_model.model, ctx.adapter):
        m = module.lora_magnitude_vector["default"].weight
        torch.testing.assert_close(m, module.base_layer.weight.norm(dim=1))  # ‖W_q‖ per output row, B = 0


def test_adalora_reaches_its_rank_budget():
    ctx = tiny_ctx()
    metrics = run_adalora(ctx, bits=2, group_size=16, max_steps=30, time_budget=0, lr=1e-2, rank=4)
    assert metrics["init_rank"] == 6
    assert sum(metrics["final_ranks"]) == 4 * 14  # target_r on average over the 14 adapted matrices
    assert len(set(metrics["final_ranks"])) > 1  # ...spread unevenly, by importance
    assert metrics["train_loss_last"] < metrics["train_loss_first"]


def test_bits_16_is_plain_lora_on_the_full_precision_model():
    ctx = tiny_ctx()
    original = {n: m.weight.detach().clone() for n, m in block_linears(ctx.model, ctx.adapter)}
    run_lora(ctx, bits=16, group_size=16, max_steps=2, time_budget=0, lr=1e-3, rank=2)
    for name, module in block_linears(ctx.model, ctx.adapter):
        assert torch.equal(module.base_layer.weight, original[name])


def test_bad_options_fail_before_any_work():
    ctx = tiny_ctx()
    with pytest.raises(ValueError, match="--bits"):
        run_lora(ctx, bits=1, group_size=16, max_steps=2, time_budget=0, lr=1e-3, rank=2)
    with pytest.raises(ValueError, match="--rank"):
        run_dora(ctx, bits=3, group_size=16, max_steps=2, time_budget=0, lr=1e-3, rank=0)


def test_domain_shift_files_are_unseen_and_disjoint():
    from reference_impls.common import corpus
    from reference_impls.common.qat import stdlib_test_files

    adapt, held = stdlib_test_files()
    assert adapt and held and not set(adapt) & set(held)
    seen = {f.path for f in corpus.stdlib_files()}  # everything the LM's split is drawn from
    assert not (set(adapt) | set(held)) & seen
    assert all(p.parent.name == "test" and p.name.startswith("test_") for p in adapt + held)
    with pytest.raises(ValueError, match="--data"):
        run_lora(tiny_ctx(), bits=3, group_size=16, max_steps=2, time_budget=0, lr=1e-3, rank=2, data="web")
