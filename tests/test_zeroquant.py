"""ZeroQuant: group-wise and token-wise quantizers by hand, finer groups help, LKD reduces error."""

import pytest
import torch

from reference_impls.common.adapters import adapter_for
from reference_impls.common.layerwise import walk_blocks
from reference_impls.common.models import tiny_model
from reference_impls.quantization.zeroquant import (
    groupwise_quantize,
    lkd_block,
    scheme_bits,
    tokenwise_quantize,
    zeroquant_linear,
)


def test_groupwise_by_hand():
    w = torch.tensor([[1.0, -0.6, 10.0, 2.5]])
    # groups of 2, 4 bits (qmax 7): scales 1/7 and 10/7
    q = groupwise_quantize(w, bits=4, group_size=2)
    assert torch.allclose(q, torch.tensor([[1.0, -4 / 7, 10.0, 2 * 10 / 7]]))
    # one group over the row: the small weights collapse
    assert groupwise_quantize(w, bits=4, group_size=-1)[0, 1] == 0.0


def test_tokenwise_by_hand():
    x = torch.tensor([[0.0, 1.0, 2.0, 3.0], [-90.0, 0.0, 45.0, 120.0]])
    q = tokenwise_quantize(x, bits=2)  # 4 levels per token over its own [min, max]
    assert torch.allclose(q[0], torch.tensor([0.0, 1.0, 2.0, 3.0]))
    # second token: scale 210/3 = 70, zero round(90/70) = 1 -> codes 0, 1, 2, 3
    assert torch.allclose(q[1], torch.tensor([-70.0, 0.0, 70.0, 140.0]))
    # a per-tensor range would wipe out the first token at 8 bits; token-wise keeps it exact
    assert torch.allclose(tokenwise_quantize(x)[0], x[0], atol=3 / 255)


def test_finer_groups_and_tokenwise_beat_coarse():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 256, generator=g) * torch.exp(torch.randn(1, 256, generator=g))  # column ranges vary
    e_row = (groupwise_quantize(w, bits=4, group_size=-1) - w).pow(2).mean()
    e_g32 = (groupwise_quantize(w, bits=4, group_size=32) - w).pow(2).mean()
    assert e_g32 < 0.7 * e_row
    x = torch.randn(64, 256, generator=g) * torch.exp(
        2 * torch.randn(64, 1, generator=g)
    )  # token ranges vary
    per_tensor_scale = x.abs().max() / 127
    e_tensor = (torch.round(x / per_tensor_scale) * per_tensor_scale - x).pow(2).mean()
    assert (tokenwise_quantize(x) - x).pow(2).mean() < 0.1 * e_tensor


def test_schemes():
    assert scheme_bits("w8a8", "mlp.down_proj") == (8, 8)
    assert scheme_bits("w4/8a16", "self_attn.q_proj") == (8, None)
    assert scheme_bits("w4/8a16", "mlp.up_proj") == (4, None)
    lin = torch.nn.Linear(64, 16)
    m = zeroquant_linear(lin.weight, lin.bias, w_bits=8, group_size=32, a_bits=8)
    x = torch.randn(3, 64)
    assert torch.allclose(m(x), lin(x), atol=0.05)
    m.freeze()
    assert torch.allclose(m.quantized_weight(), m.weight, atol=1e-6)  # re-quantizing is idempotent


def test_lkd_reduces_block_error_at_4_bits():
    model = tiny_model("llama")
    batches = [
        {"input_ids": torch.randint(0, 128, (4, 32), generator=torch.Generator().manual_seed(i))}
        for i in range(4)
    ]
    results = []

    def process(b):
        teacher = b.run()
        for name, lin in list(b.linears.items()):
            new = zeroquant_linear(
                b.weight(name), getattr(lin, "bias", None), w_bits=4, group_size=64, a_bits=None
            )
            b.block.set_submodule(name, new)
            b.linears[name] = new
        results.append(lkd_block(b, teacher, steps=60, lr=3e-5))
        for lin in b.linears.values():
            lin.freeze()

    walk_blocks(model, adapter_for(model), batches, process, stats=())
    for before, after in results:
        assert after < 0.6 * before


@pytest.mark.slow
def test_causal_lm_w8a8_within_one_percent():
    from reference_impls.common.models import CAUSAL_DIR
    from reference_impls.common.runner import run_method

    if not (CAUSAL_DIR / "model.safetensors").exists():
        pytest.skip("the causal LM is not trained in this checkout")
    m = run_method("zeroquant", model="causal", eval_windows=24, calib_samples=8)["metrics"]
    assert m["perplexity"] == pytest.approx(m["perplexity_fp"], rel=0.01)
