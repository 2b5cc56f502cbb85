"""QuaRot: rotation alone is an equivalent transform; rotated W4A4 / KV4 beat unrotated on outliers."""

import pytest
import torch

from reference_impls.common.adapters import adapter_for
from reference_impls.common.hadamard import RandomHadamard, hadamard_matrix
from reference_impls.common.models import tiny_model
from reference_impls.common.rotation import (
    online_hessian,
    quantize_asym_per_token,
    quantize_kv,
    quantize_sym_per_token,
)
from reference_impls.quantization.quarot import KV_ATTENTION, add_online_hadamards, rotate_model
from reference_impls.quantization.rtn import rtn_quantize


def test_token_quantizers_by_hand():
    x = torch.tensor([[1.0, -0.6, 0.2], [7.0, 0.0, -3.5]])
    # 4-bit symmetric: scale = max|x| / 7 per row; -3.5 rounds half to even
    codes = torch.tensor([[7.0, -4, 1], [7, 0, -4]])
    assert torch.allclose(quantize_sym_per_token(x, bits=4), codes * x[:, :1] / 7)
    # 2-bit asymmetric over [-0.5, 1]: scale 0.5, zero 1 -> codes 3, 0, 1
    x = torch.tensor([[1.0, -0.5, 0.2]])
    assert torch.allclose(quantize_asym_per_token(x, bits=2), torch.tensor([[1.0, -0.5, 0.0]]))


def _tiny_with_norms(seed=0):
    m = tiny_model("llama", seed=seed)
    with torch.no_grad():  # non-trivial RMSNorm scales, so the fold is exercised
        for n, p in m.named_parameters():
            if "norm" in n:
                p.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(1))
    return m


def test_rotation_only_leaves_outputs_unchanged():
    m = _tiny_with_norms()
    ids = torch.randint(0, 128, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = m(input_ids=ids).logits
        a = adapter_for(m)
        Q = rotate_model(m, a, seed=3)
        add_online_hadamards(m, a)  # intermediate 160 = 20 · 8: a Paley ⊗ Sylvester transform
        m.set_attn_implementation(KV_ATTENTION)  # the KV hook with no quantizer set: plain SDPA
        out = m(input_ids=ids).logits
    assert torch.allclose(out, ref, atol=1e-5 * ref.abs().max())
    assert not torch.allclose(m.get_input_embeddings().weight, m.get_output_embeddings().weight)
    # the residual stream really is rotated: block 0's input is E[ids] Q
    assert torch.allclose(Q.apply_transposed(m.get_input_embeddings().weight.double()).float(),
                          tiny_model("llama").get_input_embeddings().weight, atol=1e-6)


def test_online_hessian_is_the_hessian_of_rotated_inputs():
    x = torch.randn(64, 20, dtype=torch.float64)
    H = 2 / 64 * x.t() @ x
    Ht = hadamard_matrix(20) / 20**0.5
    assert torch.allclose(online_hessian(H), Ht.t() @ H @ Ht)
    assert torch.allclose(online_hessian(H), 2 / 64 * (x @ Ht).t() @ (x @ Ht))


def _outlier_activations(seed, n=256, d=128):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    x[:, torch.randperm(d, generator=g)[:3]] *= 50.0  # systematic outlier channels
    return x, torch.randn(96, d, generator=g) * 0.05


def test_rotated_w4a4_beats_unrotated_on_outliers():
    x, w = _outlier_activations(0)
    ref = x @ w.t()
    Q = RandomHadamard.draw(128, seed=0)

    def w4a4(x, w):
        return quantize_sym_per_token(x, bits=4, clip=0.9) @ rtn_quantize(w, bits=4, sym=True).t()

    plain = (w4a4(x, w) - ref).pow(2).mean()
    rotated = (w4a4(Q.apply(x.double()).float(), Q.apply(w.double()).float()) - ref).pow(2).mean()
    assert rotated < 0.6 * plain


def test_kv_quantization_in_hadamard_basis_beats_plain():
    g = torch.Generator().manual_seed(0)
    k = torch.randn(1, 2, 64, 32, generator=g)
    k[..., 5] += 20.0  # an outlier channel of the keys, as the paper observes
    plain = (quantize_asym_per_token(k, bits=4) - k).pow(2).mean()
    rotated = (quantize_kv(k, bits=4, clip=1.0) - k).pow(2).mean()
    assert rotated < 0.5 * plain
    assert torch.allclose(quantize_kv(k, bits=16, clip=1.0), k, atol=1e-3)


def test_non_llama_is_refused():
    m = tiny_model("opt")
    with pytest.raises(ValueError, match="Llama"):
        rotate_model(m, adapter_for(m))


@pytest.mark.slow
def test_quarot_rescues_w4a4_with_injected_outliers():
    from reference_impls.common.runner import run_method

    common = dict(calib_samples=4, eval_windows=4)
    opts = {"weight_quant": "rtn", "inject_outliers": 30.0}
    rot = run_method("quarot", options=opts, **common)
    plain = run_method("quarot", options={**opts, "rotate": False}, **common)
    fp = rot["metrics"]["perplexity_fp"]
    assert rot["metrics"]["outlier_channels_injected"] == 4
    assert rot["metrics"]["perplexity"] < 1.3 * fp < plain["metrics"]["perplexity"]
    assert rot["bits_per_weight"] == plain["bits_per_weight"]
