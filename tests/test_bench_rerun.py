"""Committed results reproduce: re-run a seeded sample of results/*.json and compare."""

import pytest

from reference_impls.common import grids


@pytest.mark.slow
def test_a_sample_of_committed_results_reproduces_within_tolerance():
    """Same method, options, seed, calibration samples and held-out windows as the committed run:
    the storage cost must match exactly and both perplexities within grids.RERUN_RTOL (relative; float
    summation order differs between machines, thread counts and library versions)."""
    checked = grids.rerun_check(n=2, seed=0)
    assert len(checked) == 2
    for item in checked:
        old, new = item["committed"], item["rerun"]
        assert new["bits_per_weight"] == pytest.approx(old["bits_per_weight"], rel=1e-12), item["label"]
        for key in ("perplexity_fp", "perplexity"):
            assert new["metrics"][key] == pytest.approx(old["metrics"][key], rel=grids.RERUN_RTOL), (
                item["label"], key)
