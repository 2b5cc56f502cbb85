"""The low-rank methods on whole models: tiny random architectures (fast) and the project's causal LM
(slow, one test): storage of the factors, rank of every compressed linear, and the papers' ordering."""

from __future__ import annotations

import pytest
import torch

from reference_impls.common.adapters import adapter_for, get_weight
from reference_impls.common.layerwise import block_linears
from reference_impls.common.models import CAUSAL_DIR, LoadedModel, tiny_model
from reference_impls.common.runner import RunContext, run_method
from reference_impls.common.storage import rank_for_ratio
from reference_impls.low_rank.asvd import run_asvd
from reference_impls.low_rank.fwsvd import run_fwsvd
from reference_impls.low_rank.svd import run_svd
from reference_impls.low_rank.svd_llm import run_svd_llm

# the entries themselves (registry.get would import every method of the project first)
ENTRIES = {"svd": run_svd, "svd-llm": run_svd_llm, "fwsvd": run_fwsvd,
           "asvd": lambda ctx, ratio: run_asvd(ctx, ratio=ratio, alpha=0.5, allocation="uniform",
                                               sensitivity_samples=2)}


def tiny_ctx(arch: str, seed: int = 0) -> RunContext:
    model = tiny_model(arch, seed=seed)
    ctx = RunContext(loaded=LoadedModel("tiny", model, None, adapter_for(model), torch.device("cpu")))
    g = torch.Generator().manual_seed(seed)
    batches = [{"input_ids": torch.randint(0, 128, (2, 32), generator=g)} for _ in range(2)]
    ctx.__dict__["calibration"] = batches  # replaces the cached property's corpus draw
    return ctx


@pytest.mark.parametrize("arch", ["llama", "gpt2", "bert"])
@pytest.mark.parametrize("method", ["svd", "svd-llm", "asvd", "fwsvd"])
def test_factors_have_the_rank_and_storage_of_the_ratio(arch, method):
    if method == "fwsvd" and arch == "bert":
        pytest.skip("fwsvd needs a language-modelling loss")
    ctx = tiny_ctx(arch)
    metrics = ENTRIES[method](ctx, ratio=0.5)
    n_dense, n_factors = 0, 0
    for name, module in block_linears(ctx.model, ctx.adapter):
        W = get_weight(module).double()
        out, inp = W.shape
        k = rank_for_ratio(out, inp, 0.5)
        assert int(torch.linalg.matrix_rank(W, rtol=1e-5)) == k, name
        assert ctx.ledger.layers[name] == (out * inp, 16 * k * (out + inp))
        n_dense, n_factors = n_dense + out * inp, n_factors + k * (out + inp)
    assert metrics["factor_params"] == n_factors and metrics["ratio_kept"] <= 0.5
    assert ctx.ledger.bits_per_weight() == pytest.approx(16 * n_factors / n_dense)


def test_bad_options_are_named():
    ctx = tiny_ctx("llama")
    with pytest.raises(ValueError, match="--ratio"):
        run_svd_llm(ctx, ratio=1.5)
    with pytest.raises(ValueError, match="--ratio"):
        run_asvd(ctx, ratio=0.2, alpha=0.5, allocation="sensitivity", sensitivity_samples=2)
    with pytest.raises(ValueError, match="--model causal"):
        run_fwsvd(tiny_ctx("bert"), ratio=0.5)


@pytest.mark.slow
@pytest.mark.skipif(not (CAUSAL_DIR / "config.json").exists(), reason="models/causal-lm is not trained yet")
def test_activation_aware_methods_beat_plain_svd_on_the_causal_lm():
    """The papers' comparison at one parameter budget: SVD-LLM and ASVD below plain SVD in perplexity."""
    def ppl(method, **options):
        rec = run_method(method, model="causal", calib_samples=16, eval_windows=8,
                         options={"ratio": 0.5, **options})
        return rec["metrics"]["perplexity"], rec["bits_per_weight"]

    svd, bits = ppl("svd")
    assert bits == pytest.approx(16 * 0.5, abs=0.05)
    assert ppl("svd-llm")[0] < ppl("asvd")[0] < svd
    # FWSVD is not asserted here: with 16 calibration windows at ratio 0.5 its row-wise Fisher
    # weighting gave 52.47 against plain SVD's 52.41 (results/fwsvd.json has the full grid)


def test_asvd_sensitivity_allocation_meets_the_budget_on_a_tiny_model():
    ctx = tiny_ctx("llama")
    m = run_asvd(ctx, ratio=0.6, alpha=0.5, allocation="sensitivity", sensitivity_samples=2)
    numel = {name: get_weight(mod).numel() for name, mod in block_linears(ctx.model, ctx.adapter)}
    assert set(m["layer_ratios"]) == set(numel)
    nominal = sum(numel[k] * r for k, r in m["layer_ratios"].items()) / sum(numel.values())
    assert nominal <= 0.6 and m["ratio_kept"] <= 0.6
    assert len(set(m["layer_ratios"].values())) > 1  # not uniform: the scores moved the budget
