"""Model level, on the project's causal LM: a short PEQA run at 2 bits recovers held-out perplexity
below its RTN starting point (the recovery every QAT/adapter method of results/ reports)."""

import pytest


@pytest.mark.slow
def test_peqa_recovers_2bit_perplexity_on_the_causal_lm():
    from reference_impls.common.runner import run_method

    record = run_method("peqa", model="causal", eval_windows=8, calib_samples=16,
                        options={"bits": 2, "max_steps": 12, "time_budget": 0.0, "lr": 5e-4})
    m = record["metrics"]
    assert m["train_steps"] == 12
    assert m["perplexity_fp"] < m["perplexity"] < m["perplexity_before"]
    assert m["trainable_params"] < 0.01 * record["params"]  # scales only
