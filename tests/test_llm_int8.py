"""LLM.int8(): vector-wise int8 by hand, exact reduction without outliers, wins with outliers."""

import pytest
import torch
from torch import nn

from reference_impls.quantization.llm_int8 import (
    exact_accumulator,
    int8_linear,
    int8_vectorwise_matmul,
    llm_int8_matmul,
)


def test_vectorwise_int8_by_hand():
    x = torch.tensor([[1.0, -2.0, 0.3], [0.5, 4.0, -1.0]])
    w = torch.tensor([[2.0, 1.0, -0.7], [-1.0, 3.0, 0.1]])
    want = torch.empty(2, 2, dtype=torch.float64)
    for i in range(2):
        cx = 127 / x[i].abs().max().item()
        for j in range(2):
            cw = 127 / w[j].abs().max().item()
            acc = sum(round(x[i, k].item() * cx) * round(w[j, k].item() * cw) for k in range(3))
            want[i, j] = acc / (cx * cw)
    assert torch.allclose(int8_vectorwise_matmul(x, w).double(), want, atol=1e-6)


def test_accumulator_is_exact_at_its_worst_case():
    # all-maximal int8 operands: 127·127·1040 = 16 774 160 < 2^24 is still exact in float32
    for n_in in (1040, 1041, 2048):
        x = torch.ones(2, n_in)
        w = -torch.ones(3, n_in)
        assert torch.equal(int8_vectorwise_matmul(x, w), torch.full((2, 3), -float(n_in)))
    assert exact_accumulator(1040) == torch.float32 and exact_accumulator(1041) == torch.float64


def test_without_outliers_equals_plain_vectorwise_int8():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 256, generator=g).clamp(-5.9, 5.9)
    w = torch.randn(64, 256, generator=g) * 0.05
    y, outliers = llm_int8_matmul(x, w, threshold=6.0)
    assert not outliers.any()
    assert torch.equal(y, int8_vectorwise_matmul(x, w))


def outlier_activations(seed, n=64, d=512, k=6):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    cols = torch.randperm(d, generator=g)[:k]
    # large models' systematic outlier features: a few channels 10-60x the rest, in every token
    x[:, cols] *= torch.linspace(10, 60, k)
    return x, cols


def test_outlier_decomposition_beats_naive_int8_by_a_wide_margin():
    x, cols = outlier_activations(1)
    w = torch.randn(256, 512, generator=torch.Generator().manual_seed(2)) * 0.05
    ref = x.double() @ w.double().T
    naive = int8_vectorwise_matmul(x, w)
    mixed, outliers = llm_int8_matmul(x, w, threshold=6.0)
    assert set(outliers.nonzero().flatten().tolist()) >= set(cols.tolist())
    err_naive = (naive - ref).norm() / ref.norm()
    err_mixed = (mixed - ref).norm() / ref.norm()
    assert err_mixed < err_naive / 5
    assert err_mixed < 0.01
    # the paper's literal form (16-bit weights for outlier columns) is at least as accurate
    mixed16, _ = llm_int8_matmul(x, w, threshold=6.0, fp16_weights=True)
    assert (mixed16 - ref).norm() / ref.norm() < 0.01


def test_int8_linear_module_and_outlier_fraction():
    x, cols = outlier_activations(3, d=128, k=4)
    lin = nn.Linear(128, 32)
    mod = int8_linear(lin.weight, lin.bias, threshold=6.0)
    y = mod(x.reshape(2, 32, 128))
    y_ref, outliers = llm_int8_matmul(x, lin.weight.detach(), threshold=6.0)
    assert torch.allclose(y.reshape(64, 32), y_ref + lin.bias.detach(), atol=1e-6)
    assert mod.matmul.outlier_fraction == outliers.sum().item() / 128
    with torch.no_grad():
        assert (y - lin(x.reshape(2, 32, 128))).norm() / lin(x).norm() < 0.01


@pytest.mark.slow
def test_causal_lm_int8_within_one_percent_and_decomposition_helps_with_outliers():
    from reference_impls.common.models import CAUSAL_DIR
    from reference_impls.common.runner import run_method

    if not (CAUSAL_DIR / "model.safetensors").exists():
        pytest.skip("the causal LM is not trained in this checkout")
    common = dict(model="causal", eval_windows=24, calib_samples=8)
    plain = run_method("llm-int8", **common)["metrics"]
    assert plain["perplexity"] == pytest.approx(plain["perplexity_fp"], rel=0.01)
    mixed = run_method("llm-int8", options={"inject_outliers": 30.0}, **common)["metrics"]
    naive = run_method("llm-int8", options={"inject_outliers": 30.0, "threshold": 1e6}, **common)["metrics"]
    assert mixed["outlier_fraction"] > 0 and naive["outlier_fraction"] == 0
    fp = mixed["perplexity_fp"]
    assert mixed["perplexity"] - fp < 0.5 * (naive["perplexity"] - fp)
