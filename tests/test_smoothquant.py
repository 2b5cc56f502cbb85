"""SmoothQuant: the smoothing is an equivalent transform; with outliers it rescues W8A8."""

import pytest
import torch

from reference_impls.common.layerwise import walk_blocks
from reference_impls.common.models import tiny_model
from reference_impls.quantization.smoothquant import (
    quantize_activation,
    quantize_block_w8a8,
    quantize_weight_per_channel,
    smooth_block,
    smoothing_factors,
    w8a8_linear,
)


def outlier_input(seed, n=128, d=256, k=4, scale=40.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    cols = torch.randperm(d, generator=g)[:k]
    x[:, cols] *= scale  # systematic outlier channels, present in every token
    return x, cols


def test_factors_by_hand_and_equivalence():
    act = torch.tensor([4.0, 1.0, 9.0])
    w1 = torch.tensor([[1.0, -2.0, 0.5], [0.25, 1.0, -1.0]])
    w2 = torch.tensor([[-4.0, 0.5, 0.25]])
    # max|W_j| over all rows of both weights: [4, 2, 1]; alpha 0.5: sqrt(act / wmax)
    s = smoothing_factors(act, [w1, w2], alpha=0.5)
    assert torch.allclose(s, torch.tensor([1.0, 0.5**0.5, 3.0]))
    assert torch.allclose(smoothing_factors(act, [w1], alpha=1.0), act)
    x = torch.randn(5, 3, dtype=torch.float64)
    w = w1.double()
    sd = s.double()
    assert torch.allclose((x / sd) @ (w * sd).T, x @ w.T)


def test_fake_quantizers_by_hand():
    x = torch.tensor([[1.0, -0.5, 0.26], [100.0, 1.0, -2.0]])
    # per token: scales 1/127 and 100/127
    q = quantize_activation(x, granularity="token")
    assert torch.allclose(q[0], torch.tensor([127, -64, 33]) / 127.0)
    assert torch.allclose(q[1], torch.tensor([127, 1, -3]) * 100 / 127.0)
    # per tensor: one scale 100/127 -> the first token keeps only -1, 0 or +1 steps
    assert torch.allclose(
        quantize_activation(x, granularity="tensor")[0], torch.tensor([1.0, -1.0, 0.0]) * 100 / 127
    )
    # static scale clips what exceeds it
    assert quantize_activation(x, granularity="static", static_absmax=torch.tensor(2.0))[1, 0] == 2.0
    w = torch.tensor([[0.5, -1.0], [3.0, 0.01]])
    assert torch.allclose(quantize_weight_per_channel(w), torch.tensor([[64 / 127, -1.0], [3.0, 0.0]]))


def test_smoothing_rescues_per_tensor_w8a8_with_outliers():
    x, _ = outlier_input(0)
    w = torch.randn(128, 256, generator=torch.Generator().manual_seed(1)) * 0.05
    ref = x @ w.T
    naive = w8a8_linear(w, None, act_granularity="tensor")(x)
    s = smoothing_factors(x.abs().amax(0), [w], alpha=0.5)
    smoothed = w8a8_linear(w * s, None, act_granularity="tensor")(x / s)
    err_naive = (naive - ref).norm() / ref.norm()
    err_smooth = (smoothed - ref).norm() / ref.norm()
    assert err_naive > 0.04
    assert err_smooth < err_naive / 4


def _block_outputs(model, batches):
    outs = []
    hooks = [
        b.register_forward_hook(lambda _m, _i, o: outs.append(o[0] if isinstance(o, tuple) else o))
        for b in model.model.layers
    ]
    with torch.no_grad():
        logits = [model(**b).logits for b in batches]
    for h in hooks:
        h.remove()
    return logits, outs


def _inject_outliers(model, channels, factor=30.0):
    """Make activation outliers without changing the function: norm weight x f, consumers' columns / f."""
    with torch.no_grad():
        for layer in model.model.layers:
            for norm, consumers in (
                (layer.input_layernorm, ("q_proj", "k_proj", "v_proj")),
                (layer.post_attention_layernorm, ("gate_proj", "up_proj")),
            ):
                norm.weight[channels] *= factor
                parent = layer.self_attn if consumers[0] == "q_proj" else layer.mlp
                for c in consumers:
                    getattr(parent, c).weight[:, channels] /= factor


def test_smoothing_alone_leaves_every_layer_output_unchanged():
    model = tiny_model("llama")
    _inject_outliers(model, [3, 17])
    batches = [
        {"input_ids": torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(i))}
        for i in range(2)
    ]
    logits_ref, outs_ref = _block_outputs(model, batches)
    walk_blocks(
        model, model_adapter(model), batches, lambda b: smooth_block(b, alpha=0.5), stats=("act_max",)
    )
    logits, outs = _block_outputs(model, batches)
    assert len(outs) == len(outs_ref) == 4
    for a, b in zip(outs + logits, outs_ref + logits_ref, strict=True):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
    # and it did change the weights: the outlier channels of q_proj's columns grew back
    assert model.model.layers[0].input_layernorm.weight[3].abs() < 30 * 0.5


def model_adapter(model):
    from reference_impls.common.adapters import adapter_for

    return adapter_for(model)


def test_w8a8_on_tiny_llama_with_outliers_smoothing_helps():
    batches = [{"input_ids": torch.randint(0, 128, (4, 32), generator=torch.Generator().manual_seed(9))}]

    def run(smooth):
        model = tiny_model("llama")
        _inject_outliers(model, [3, 17, 40], factor=50.0)
        ref = model(**batches[0]).logits.detach()

        def process(b):
            if smooth:
                smooth_block(b, alpha=0.5)
            quantize_block_w8a8(b, act_granularity="tensor")

        walk_blocks(model, model_adapter(model), batches, process, stats=("act_max",))
        with torch.no_grad():
            out = model(**batches[0]).logits
        return ((out - ref).norm() / ref.norm()).item()

    naive, smoothed = run(False), run(True)
    assert smoothed < naive / 3


@pytest.mark.slow
def test_causal_lm_w8a8_within_one_percent_and_outliers_recovered():
    from reference_impls.common.models import CAUSAL_DIR
    from reference_impls.common.runner import run_method

    if not (CAUSAL_DIR / "model.safetensors").exists():
        pytest.skip("the causal LM is not trained in this checkout")
    common = dict(model="causal", eval_windows=24, calib_samples=16)
    plain = run_method("smoothquant", **common)["metrics"]
    assert plain["perplexity"] == pytest.approx(plain["perplexity_fp"], rel=0.01)
    stress = {"act_quant": "tensor", "inject_outliers": 30.0}
    naive = run_method("smoothquant", options={**stress, "smooth": False}, **common)["metrics"]
    smooth = run_method("smoothquant", options=stress, **common)["metrics"]
    fp = naive["perplexity_fp"]
    # the injected outliers hurt naive per-tensor W8A8; smoothing wins back most of the loss
    assert naive["perplexity"] > 1.02 * fp
    assert smooth["perplexity"] - fp < 0.5 * (naive["perplexity"] - fp)
