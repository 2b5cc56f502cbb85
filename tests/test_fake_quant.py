"""One fake-quantized Linear for every W+A method: it computes what each method's own layer computed.

Each case transcribes the old per-method layer literally, x_q @ W_q.T + b with that method's own
quantizers, and compares it with the FakeQuantLinear the method now builds.
"""

import pytest
import torch
from torch import nn

from reference_impls.common.adapters import adapter_for, get_weight
from reference_impls.common.fake_quant import FakeQuantLinear, swap_model_linears
from reference_impls.common.models import tiny_model
from reference_impls.formats.fp8 import fp8_quantize
from reference_impls.formats.mx import mx_quantize
from reference_impls.quantization.llm_int8 import int8_linear
from reference_impls.quantization.smoothquant import (
    quantize_activation,
    quantize_weight_per_channel,
    w8a8_linear,
)
from reference_impls.quantization.zeroquant import groupwise_quantize, tokenwise_quantize, zeroquant_linear


def data(seed=0, d=96, out=24):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 5, d, generator=g)
    x[..., 3] *= 12  # an outlier feature dimension (LLM.int8() routes it to 16 bits)
    return x, torch.randn(out, d, generator=g) * 0.1, torch.randn(out, generator=g)


@pytest.mark.parametrize("granularity", ["token", "tensor", "static"])
def test_smoothquant_w8a8(granularity):
    x, w, b = data(1)
    static = x.abs().amax() * 0.8 if granularity == "static" else None
    got = w8a8_linear(w, b, act_granularity=granularity, static_absmax=static)(x)
    xq = quantize_activation(x, granularity=granularity, static_absmax=static)
    assert torch.equal(got, xq @ quantize_weight_per_channel(w).T + b)


@pytest.mark.parametrize("a_bits", [8, None])
def test_zeroquant(a_bits):
    x, w, b = data(2)
    m = zeroquant_linear(w, b, w_bits=4, group_size=32, a_bits=a_bits)
    xq = x if a_bits is None else tokenwise_quantize(x, bits=a_bits)
    want = xq @ groupwise_quantize(w, bits=4, group_size=32).T + b
    assert torch.allclose(m(x), want, atol=1e-6)
    m.freeze()
    assert torch.allclose(m(x), want, atol=1e-6)


def test_fp8_and_mx():
    x, w, b = data(3)
    for wq, aq in [
        (fp8_quantize(w, fmt="e4m3", granularity="channel"), lambda t: fp8_quantize(t, fmt="e4m3")),
        (mx_quantize(w, "mxfp4"), lambda t: mx_quantize(t, "mxfp4")),
    ]:
        assert torch.allclose(FakeQuantLinear(wq, b, act_quant=aq)(x), aq(x) @ wq.T + b, atol=1e-6)


@pytest.mark.parametrize("threshold", [6.0, float("inf")])
def test_llm_int8_vectorwise_with_outlier_decomposition(threshold):
    x, w, b = data(4)
    got = int8_linear(w, b, threshold=threshold)(x).reshape(-1, w.shape[0]).double()
    X, W = x.reshape(-1, w.shape[1]).double(), w.double()
    outliers = (X.abs() >= threshold).any(0)  # (in,)
    sw = W.abs().amax(1, keepdim=True) / 127
    Wq = torch.round(W / sw)  # per-row int8 codes
    Xr = X.masked_fill(outliers, 0)
    sx = Xr.abs().amax(1, keepdim=True) / 127
    want = (torch.round(Xr / sx) @ Wq.T) * sx * sw.T  # the int32 accumulator, de-quantized
    if outliers.any():  # fp16 product (and output) with the de-quantized int8 weight columns
        x_fp16 = X[:, outliers].half().double()
        w_fp16 = (Wq[:, outliers] * sw).half().double()
        want = want + (x_fp16 @ w_fp16.T).half().double()
    assert torch.allclose(got, want + b.double(), atol=1e-5)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_swap_keeps_names_and_layout(arch):
    model = tiny_model(arch)
    ids = {"input_ids": torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(0))}
    with torch.no_grad():
        ref = model(**ids).logits
    adapter = adapter_for(model)
    weights = {name: get_weight(model.get_submodule(name)).clone() for name in _names(model, adapter)}
    new = swap_model_linears(
        model, adapter, lambda _n, w, old: FakeQuantLinear(w, getattr(old, "bias", None))
    )
    assert set(new) == set(weights)
    for name, module in new.items():
        assert model.get_submodule(name) is module and isinstance(module, nn.Module)
        assert torch.equal(module.weight, weights[name])  # GPT-2's Conv1D (in, out) read as (out, in)
    with torch.no_grad():
        assert torch.allclose(model(**ids).logits, ref, atol=1e-5)


def _names(model, adapter):
    n_blocks = len(adapter.blocks(model))
    return [f"{adapter.blocks_path}.{i}.{n}" for i in range(n_blocks) for n in adapter.linear_names]
