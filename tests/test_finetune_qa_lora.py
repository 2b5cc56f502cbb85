"""QA-LoRA: the merged model equals adapter-on inference, the codes never change, the adapter is
peft's GPTQ QA-LoRA variant up to its pooling constant, and a short run lowers the loss."""

import torch

from reference_impls.common.layerwise import block_linears
from reference_impls.common.qat import QuantLinear
from reference_impls.finetuning.qa_lora import QALoRALinear, run_qa_lora
from tests.qat_fixtures import tiny_ctx


def trained_layer(seed=0, out=12, inp=32, group=8, rank=3):
    g = torch.Generator().manual_seed(seed)
    base = QuantLinear.from_weight(torch.randn(out, inp, generator=g), None, bits=3, group_size=group)
    layer = QALoRALinear(base, rank=rank, alpha=2 * rank)
    with torch.no_grad():  # stand-in for training: B away from zero
        layer.lora_B.copy_(torch.randn(out, rank, generator=g))
    return layer


def test_merged_equals_adapter_on_and_codes_unchanged():
    layer = trained_layer().double()  # float64: the merge is exact up to rounding
    x = torch.randn(5, 7, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    merged = layer.merge()
    assert torch.equal(merged.codes, layer.base.codes) and torch.equal(merged.scale, layer.base.scale)
    on = layer(x)
    torch.testing.assert_close(merged(x), on, rtol=1e-9, atol=1e-9)
    # and the merge really moved the zeros: without the adapter the output differs
    assert (layer.base(x) - on).abs().max() > 1e-3


def test_pooled_adapter_by_hand_and_against_peft_variant():
    from types import SimpleNamespace

    from peft.tuners.lora.variants import QALoraLinearVariant

    layer = trained_layer()
    x = torch.randn(4, 32, generator=torch.Generator().manual_seed(2))
    ours = layer(x) - layer.base(x)
    # by hand: each group's inputs summed, then B·A, times alpha/r
    pooled = torch.stack([x[:, g * 8:(g + 1) * 8].sum(1) for g in range(4)], 1)  # (4, L=4)
    torch.testing.assert_close(ours, layer.scaling * pooled @ layer.lora_A.t() @ layer.lora_B.t())
    stub = SimpleNamespace(lora_A={"a": SimpleNamespace(weight=layer.lora_A.detach())},
                           lora_B={"a": SimpleNamespace(weight=layer.lora_B.detach())},
                           lora_dropout={"a": torch.nn.Identity()}, scaling={"a": layer.scaling},
                           qalora_group_size={"a": 8}, in_features=32, training=False)
    peft_delta = QALoraLinearVariant.forward(stub, "a", x, torch.zeros(4, 12))
    # peft scales the group mean by the number of groups L = 4; the paper (and we) by the group size 8
    torch.testing.assert_close(ours.detach(), peft_delta * (8 / 4))


def test_qa_lora_trains_then_merges_to_integer_model():
    ctx = tiny_ctx()
    metrics = run_qa_lora(ctx, bits=2, group_size=16, max_steps=30, time_budget=0, lr=1e-2, rank=4)
    for _name, module in block_linears(ctx.model, ctx.adapter):
        assert isinstance(module, QuantLinear) and module.codes.dtype == torch.uint8
    after = ctx.heldout_perplexity()
    assert abs(after - metrics["perplexity_adapters_on"]) < 1e-3 * after  # merging changed nothing
    assert metrics["train_loss_last"] < metrics["train_loss_first"]
    assert after < metrics["perplexity_before"]
    assert metrics["trainable_params"] == sum(4 * (m.in_features // 16 + m.out_features)
                                              for _n, m in block_linears(ctx.model, ctx.adapter))
