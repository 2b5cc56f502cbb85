"""LLM-QAT: symmetric MinMax with STE by hand, the soft cross-entropy = H(p_T) + KL(p_T‖p_S), the
hybrid greedy-then-sampled generation, and a tiny data-free run with W/A/KV quantized."""

import torch

from reference_impls.common.layerwise import block_linears
from reference_impls.qat.llm_qat import generate_data, run_llm_qat, soft_cross_entropy, sym_minmax_ste
from tests.qat_fixtures import tiny_ctx


def test_sym_minmax_by_hand_with_straight_through_gradient():
    x = torch.tensor([[1.0, -0.4, 0.2], [-0.3, 0.0, 0.15]], requires_grad=True)
    y = sym_minmax_ste(x, bits=3)  # 3 levels each side: Δ = max|x| / 3
    # row 0: Δ = 1/3: [3, -1.2, 0.6] -> [3, -1, 1]; row 1: Δ = 0.1: [-3, 0, 1.5] -> [-3, 0, 2] (half to even)
    torch.testing.assert_close(y.detach(), torch.tensor([[1.0, -1 / 3, 1 / 3], [-0.3, 0.0, 0.2]]))
    (y * torch.arange(6.0).reshape(2, 3)).sum().backward()
    assert torch.equal(x.grad, torch.arange(6.0).reshape(2, 3))


def test_soft_cross_entropy_is_entropy_plus_kl():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 5, 11, generator=g), torch.randn(2, 5, 11, generator=g)
    p_t = t.double().softmax(-1)
    kl = (p_t * (p_t.log() - s.double().log_softmax(-1))).sum(-1)
    entropy = -(p_t * p_t.log()).sum(-1)
    torch.testing.assert_close(soft_cross_entropy(s, t).double(), (entropy + kl).mean(), rtol=1e-5, atol=1e-6)


def test_generated_data_is_greedy_then_sampled():
    ctx = tiny_ctx()
    ids = generate_data(ctx.model, n=6, length=20, greedy=4, seed=3)
    assert ids.shape == (6, 20)
    with torch.no_grad():
        logits = ctx.model(input_ids=ids).logits  # (6, 20, vocab)
    greedy = logits[:, :4].argmax(-1)  # the tokens the model puts first after positions 0..3
    assert torch.equal(ids[:, 1:5], greedy)
    # afterwards sampled: not the argmax continuation everywhere
    assert not torch.equal(ids[:, 5:], logits[:, 4:-1].argmax(-1))
    assert torch.equal(ids, generate_data(ctx.model, n=6, length=20, greedy=4, seed=3))  # seeded


def test_llm_qat_tiny_run_quantizes_weights_activations_and_kv():
    ctx = tiny_ctx()
    metrics = run_llm_qat(ctx, bits=3, group_size=16, max_steps=30, time_budget=0, lr=3e-3, act_bits=8,
                          kv_bits=4, gen_samples=16, gen_length=32)
    assert metrics["train_loss_last"] < metrics["train_loss_first"]
    assert metrics["generated_tokens"] == 16 * 32
    for name, m in block_linears(ctx.model, ctx.adapter):
        w = m.weight.detach().reshape(m.out_features, -1, 16)
        delta = w.abs().amax(-1, keepdim=True) / 3
        torch.testing.assert_close(w / delta, (w / delta).round(), rtol=0, atol=1e-4)  # stored on the grid
        assert m.act_quant is not None
        if name.endswith(("k_proj", "v_proj")):
            out = m(torch.randn(3, m.in_features))
            levels = out / (out.abs().amax(-1, keepdim=True) / 7)  # 4-bit KV: 7 levels each side
            torch.testing.assert_close(levels, levels.round(), rtol=0, atol=1e-4)
