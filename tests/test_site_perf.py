"""The Results page's speed table from results/perf.json."""

from __future__ import annotations

import json

from catalog.site_perf import perf_section


def test_speed_table_rows_and_ratios(tmp_path):
    perf = {"generated": "2026-12-03T01:00:00+00:00", "machine": {"cpus": 2, "torch_threads": 2,
                                                                   "load_at_start": [3.5, 2, 1]},
            "gptq_layer": {"shape": [4096, 4096], "bits": 4, "group_size": 128, "gptq_s": 3.0,
                           "straightforward_s": 6.0},
            "sparsegpt_layer": {"shape": [4096, 4096],
                                "patterns": [{"sparsity": 0.5, "sparsegpt_s": 2.0, "straightforward_s": 5.0},
                                             {"prune_n": 2, "prune_m": 4, "sparsegpt_s": 3.0,
                                              "straightforward_s": 4.0}]},
            "hessian_accumulation": {"tokens": 16384, "in_features": 4096, "accumulate_s": 1.1,
                                     "gemm_floor_s": 1.0},
            "atlas_run": {"rtn": {"wall_s_min": 12.5, "eval_windows": 565, "eval_dtype": "bfloat16",
                                  "compress_s": 0.2, "eval_s": 9.0,
                                  "fastest": {"startup_s": 3.5, "compress_s": 0.1, "eval_s": 8.0}},
                          "gptq": {"wall_s_min": 20.0, "fastest": {"startup_s": "x"}}},
            "llmcompressor": {"ran": True, "llmcompressor": "0.14.0.1", "ours_s": 10.0,
                              "llmcompressor_s": 40.0, "perplexity_ours": 39.6,
                              "perplexity_llmcompressor": 39.7},
            "search_site": {"records": 120, "catalog": {"hybrid": {"p50_ms": 7.5}},
                            "cold_atlas_search": {"atlas_search_s_median": 2.4}, "site_build_warm_s": 9.0}}
    path = tmp_path / "perf.json"
    path.write_text(json.dumps(perf))
    text = "\n".join(perf_section(path))
    assert "| GPTQ 4-bit g128, one 4096×4096 layer, vs the official loop | 3.00 | 6.00 | 0.50 |" in text
    assert "| SparseGPT 50%, one 4096×4096 layer, vs the official loop | 2.00 | 5.00 | 0.40 |" in text
    assert "| SparseGPT 2:4, one 4096×4096 layer, vs the official loop | 3.00 | 4.00 | 0.75 |" in text
    assert "vs bare xᵀx GEMM | 1.10 | 1.00 | 1.10 |" in text
    assert ("`atlas run rtn` end to end (565 held-out windows, bfloat16; start-up 3.50 s, compression 0.10 s"
            in text)
    # a start-up that is not a number is left out
    assert "`atlas run gptq` end to end (None held-out windows, None; compression – s" in text
    assert "| 12.50 | – | – |" in text
    assert ("reference = llmcompressor 0.14.0.1 one-shot, same calibration (perplexity 39.60 vs 39.70, "
            "float32 held-out) | 10.00 | 40.00 | 0.25 |") in text
    assert "search p50, catalog (120 records), ms | 7.50" in text and "load average 3.50" in text


def test_no_table_without_a_readable_file(tmp_path):
    assert perf_section(tmp_path / "missing.json") == []
    bad = tmp_path / "perf.json"
    bad.write_text("{not json")
    assert perf_section(bad) == []
    bad.write_text(json.dumps({"machine": {}}))
    assert perf_section(bad) == []
