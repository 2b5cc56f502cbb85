"""`atlas bench perf` parts on small sizes: the timing harnesses run, compare like with like, and report
finite figures (the timings themselves are machine-dependent and not asserted)."""

from __future__ import annotations

import math

import torch

from reference_impls.common import perf_bench, sparsegpt_timing


def test_sparsegpt_layer_timing_compares_the_same_problem():
    out = sparsegpt_timing.layer_timing(n=256, n_tokens=2048, repeats=1)
    assert [p.get("prune_n", 0) for p in out["patterns"]] == [0, 2]
    for p in out["patterns"]:
        assert p["sparsegpt_s"] > 0 and p["straightforward_s"] > 0 and math.isfinite(p["ratio"])
        # same problem, same algorithm: the official threshold's extra weight per block (2 blocks of 128
        # columns over 65,536 weights) is the only systematic difference in the masks
        assert p["mask_disagreement"] <= 2 / 65536 + 1e-3
        assert p["layer_error_sparsegpt"] <= p["layer_error_straightforward"] * 1.01


def test_hessian_accumulation_is_the_gemm_plus_little():
    from reference_impls.common.layerwise import LinearStats

    out = perf_bench.hessian_vs_gemm(n_in=64, chunk=128, chunks=3, repeats=1)
    assert out["tokens"] == 384 and out["accumulate_s"] > 0 and out["gemm_floor_s"] > 0
    xs = [torch.randn(128, 64) for _ in range(3)]  # and the accumulation it times is H = 2/n Σ x xᵀ
    stats = LinearStats(in_features=64, want=frozenset({"hessian"}), device=torch.device("cpu"))
    for x in xs:
        stats.add(x)
    X = torch.cat(xs).double()
    torch.testing.assert_close(stats.hessian.double(), 2 * X.t() @ X / 384, rtol=1e-4, atol=1e-4)


def test_without_an_llmcompressor_environment_the_comparison_says_why(monkeypatch, tmp_path):
    monkeypatch.setenv("ATLAS_LLMCOMPRESSOR_PYTHON", str(tmp_path / "no-such-python"))
    assert perf_bench.llmcompressor_python() is None
    out = perf_bench.llmcompressor_vs_ours()  # returns before loading anything
    assert out["ran"] is False and "make llmcompressor" in out["why"]


def test_cli_sets_a_passive_openmp_wait_unless_the_environment_says_otherwise():
    import os
    import subprocess
    import sys

    code = "import os, catalog.cli; print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "PASSIVE"
    out = subprocess.run([sys.executable, "-c", code], env={**env, "OMP_WAIT_POLICY": "ACTIVE"},
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ACTIVE"


def test_atlas_runs_keeps_each_runs_phases_and_picks_the_fastest(monkeypatch):
    import json
    import subprocess
    import types

    walls = iter([10.0, 30.0, 40.0, 52.0])  # perf_counter: the start and end of each timed run
    evals = iter([5.0, 4.0])

    def fake_run(cmd, **kwargs):
        rec = {"time_s": 1.0, "env": {"process_age_s": 3.0},
               "metrics": {"eval_time_s": next(evals), "perplexity": 40.0, "perplexity_fp": 39.0,
                           "eval_windows": 565}}
        return types.SimpleNamespace(returncode=0, stdout=json.dumps(rec), stderr="")

    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: fake_run(cmd) if "--model" in cmd else None)
    monkeypatch.setattr(perf_bench.time, "perf_counter", lambda: next(walls))
    out = perf_bench.atlas_runs(methods=("rtn",), repeats=2)["rtn"]
    # walls 20 s (eval 5) and 12 s (eval 4); the rest = wall - start-up 3 - compression 1 - evaluation
    assert [r["wall_s"] for r in out["runs"]] == [20.0, 12.0]
    assert [r["after_eval_s"] for r in out["runs"]] == [11.0, 4.0]
    assert out["wall_s_min"] == 12.0 and out["fastest"]["eval_s"] == 4.0
    assert out["fastest"]["startup_s"] == 3.0
