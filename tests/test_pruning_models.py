"""Model-level pruning on the project's trained causal LM (slow: run by CI, a few runs only).

Each run calibrates on 16 windows and evaluates perplexity on 8 held-out windows; the comparisons
are the ones the papers make, so a pruner replaced by its baseline would fail them.
"""

from __future__ import annotations

import pytest

from reference_impls.common.models import CAUSAL_DIR
from reference_impls.common.runner import run_method

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (CAUSAL_DIR / "config.json").exists(), reason="models/causal-lm is not trained yet"
    ),
]


def run(method: str, **options) -> dict:
    record = run_method(method, model="causal", calib_samples=16, eval_windows=8, options=options)
    return record


@pytest.mark.parametrize("pattern", [{"sparsity": 0.5}, {"prune_n": 2, "prune_m": 4}])
def test_sparsegpt_and_wanda_beat_magnitude(pattern):
    """The papers' comparisons: Wanda's activation-aware mask beats magnitude, and SparseGPT's weight
    update beats both mask-only pruners (50% unstructured and 2:4)."""
    mag = run("magnitude", **pattern)["metrics"]["perplexity"]
    wanda = run("wanda", **pattern)
    sgpt = run("sparsegpt", **pattern)
    assert wanda["metrics"]["sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert wanda["metrics"]["perplexity"] < mag
    assert sgpt["metrics"]["perplexity"] < wanda["metrics"]["perplexity"]
    # real sparse storage: 16-bit values of half the weights plus a 1-bit mask or 2:4 metadata
    assert wanda["bits_per_weight"] == pytest.approx(9.0, abs=0.05)


def test_structured_pruning_removes_parameters_and_keeps_a_language_model():
    record = run("shortgpt", n_remove=1)
    m = record["metrics"]
    assert m["params_removed"] > 0.05 and len(m["removed_layers"]) == 1
    assert m["latency_ms"] > 0 and m["latency_ms_dense"] > 0
    # one layer of six removed costs about 30% perplexity on the full benchmark (results/shortgpt.json)
    assert m["perplexity"] < 1.5 * m["perplexity_fp"]
