"""QLoRA: the NF4 base stays bit for bit while the adapters train. LoftQ: ‖W − (Q + BA)‖ below
QLoRA's ‖W − Q‖, the alternation equal to peft's LoftQ loop (its SVD split, bitsandbytes' NF4), and a
better starting point than the zero-initialised adapters."""

import pytest
import torch

from reference_impls.common.layerwise import block_linears
from reference_impls.common.normal_float import NF4Linear, nf4_decode, nf4_encode
from reference_impls.finetuning.loftq import loftq_init, quantizer, run_loftq
from reference_impls.finetuning.qlora import run_qlora
from tests.qat_fixtures import tiny_ctx


def test_qlora_base_stays_nf4_bit_for_bit():
    ctx = tiny_ctx()
    expected = {n: nf4_encode(m.weight.detach().clone()) for n, m in block_linears(ctx.model, ctx.adapter)}
    metrics = run_qlora(ctx, bits=4, group_size=64, max_steps=30, time_budget=0, lr=1e-2, rank=4)
    n_weights = adapters = 0
    for name, module in block_linears(ctx.model, ctx.adapter):
        base = module.base_layer
        assert isinstance(base, NF4Linear)
        assert [p.dtype for p in base.parameters()] == [torch.uint8]  # only the codes: no float weight
        assert not base.codes.requires_grad
        e = expected[name]
        assert torch.equal(base.codes, e.codes) and base.codes.dtype == torch.uint8
        assert torch.equal(base.absmax_codes, e.absmax_codes)
        assert torch.equal(base.absmax_scale, e.absmax_scale)
        assert torch.equal(base.weight, nf4_decode(e))  # the layer computes with the NF4 weight
        assert module.lora_B["default"].weight.abs().sum() > 0
        n_weights += e.codes.numel()
        adapters += sum(p.numel() for n, p in module.named_parameters() if "lora_" in n)
        nf4_bits = e.bits()
        assert nf4_bits == 4 * e.codes.numel() + 8 * (e.codes.numel() // 64) + 32 + 32
    assert metrics["trainable_params"] == adapters
    assert metrics["train_loss_last"] < metrics["train_loss_first"]
    assert ctx.heldout_perplexity() < metrics["perplexity_before"]
    assert ctx.ledger.bits_per_weight() > 4.1
    params = sum(p.numel() for p in ctx.model.parameters())  # the codes count as the weights they are
    assert ctx.ledger.model_bits(params) >= 4 * n_weights + 16 * (params - n_weights)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_loftq_error_below_plain_quantization(bits):
    W = torch.randn(96, 128, generator=torch.Generator().manual_seed(bits)) * 0.02
    q = quantizer(bits=bits, group_size=32)
    plain = (W - q(W)).norm()
    Q1, A1, B1 = loftq_init(W, quantize=q, rank=8, num_iter=1)
    assert torch.equal(Q1, q(W))  # T = 1: QLoRA's Q plus the rank-r SVD of its error
    err1 = (W - Q1 - B1 @ A1).norm()
    assert err1 < plain
    torch.testing.assert_close(err1 ** 2, plain ** 2 - torch.linalg.svdvals(W - Q1)[:8].pow(2).sum(),
                               rtol=1e-4, atol=1e-8)  # Eckart-Young: the top 8 squared singular values go
    Q5, A5, B5 = loftq_init(W, quantize=q, rank=8, num_iter=5)
    assert (W - Q5 - B5 @ A5).norm() < plain


def test_loftq_matches_peft_loop_with_bitsandbytes_nf4():
    bnb = pytest.importorskip("bitsandbytes")
    from peft.utils.loftq_utils import _low_rank_decomposition

    def bnb_nf4(w):
        p = bnb.nn.Params4bit(w.contiguous(), requires_grad=False, compress_statistics=False,
                              quant_type="nf4")
        p = p._quantize("cpu") if hasattr(p, "_quantize") else p.to("cpu")
        return bnb.functional.dequantize_4bit(p.data, p.quant_state)

    W = torch.randn(64, 96, generator=torch.Generator().manual_seed(0))
    # peft 0.21 `loftq_init`, its loop transcribed with device = cpu (peft hard-codes cuda there)
    res = W.clone()
    for i in range(3):
        deq = bnb_nf4(res)
        res = W - deq
        out = _low_rank_decomposition(res, reduced_rank=4)
        L, R = out["L"], out["R"]
        if i + 1 == 3:
            break
        res = W - L @ R
    Q, A, B = loftq_init(W, quantize=bnb_nf4, rank=4, num_iter=3)
    torch.testing.assert_close(Q, deq, rtol=0, atol=0)
    torch.testing.assert_close(A, R, rtol=1e-5, atol=1e-5)  # lora_A = R
    torch.testing.assert_close(B, L, rtol=1e-5, atol=1e-5)  # lora_B = L


def test_loftq_model_level_init_error_and_training():
    ctx = tiny_ctx()
    metrics = run_loftq(ctx, bits=2, group_size=16, max_steps=20, time_budget=0, lr=1e-2, rank=4, iters=3)
    assert metrics["init_error_loftq"] < metrics["init_error_ptq"]
    # (the random tiny model's perplexity says little about weight error; the real model's is in results/)
    assert metrics["train_loss_last"] < metrics["train_loss_first"]
    for _name, module in block_linears(ctx.model, ctx.adapter):
        assert not module.base_layer.weight.requires_grad
