"""The memory and energy calculator: its figures equal what generation holds, and `atlas memory`."""

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from catalog.cli import app
from reference_impls.common import generation as G
from reference_impls.common import memory
from reference_impls.common.models import tiny_model
from reference_impls.kv_cache.streaming_llm import StreamingPolicy


def _n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_calculator_matches_bytes_held_during_generation():
    model = tiny_model("llama")
    ids = torch.randint(1, 128, (2, 10), generator=torch.Generator().manual_seed(0))
    full = G.generate(model, ids, G.KeepAll(), max_new_tokens=12)
    est = memory.estimate(model.config, params=_n_params(model), context=10 + 12 - 1)
    assert full.bytes_final == 2 * est.kv_bytes  # batch of 2
    capped = G.generate(model, ids, StreamingPolicy(n_sink=2, n_recent=6), max_new_tokens=12)
    assert capped.bytes_peak == 2 * memory.estimate(model.config, params=1, context=21, kv_budget=8).kv_bytes


def test_estimate_by_hand():
    model = tiny_model("llama")  # 2 layers, 2 KV heads, head_dim 16
    est = memory.estimate(model.config, params=1000, weight_bits_per_param=4, context=50, kv_bits=16)
    assert est.kv_bytes_per_token == 2 * 2 * 2 * 16 * 2
    assert est.weight_bytes == 500 and est.kv_bytes == 50 * est.kv_bytes_per_token
    assert est.bytes_per_token == 500 + est.kv_bytes
    assert est.energy_per_token_j == pytest.approx(est.bytes_per_token * 160e-12)
    assert memory.estimate(model.config, params=8, causal=False).kv_bytes == 0
    with pytest.raises(ValueError, match="--context"):
        memory.estimate(model.config, params=8, context=0)


def test_count_params_without_weights():
    model = tiny_model("llama")
    assert memory.count_params(model.config) == _n_params(model)


def test_atlas_memory_cli(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["memory", "models/causal-lm/config.json", "--kv-budget", "64", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["kv_positions"] == 64 and data["kv_bytes"] == 64 * data["kv_bytes_per_token"]
    assert "640 pJ" in data["assumption"]
    bad = tmp_path / "config.json"
    bad.write_text("{}")
    res = runner.invoke(app, ["memory", str(bad)])
    assert res.exit_code == 1 and "no model_type" in res.output
    res = runner.invoke(app, ["memory", "causal", "--method", "nosuch"])
    assert res.exit_code == 1 and "unknown method" in res.output
    # the stored run's KV ratio is measured against the float32 cache: --kv-bits on top would count twice
    res = runner.invoke(app, ["memory", "causal", "--method", "kivi", "--kv-bits", "2"])
    assert res.exit_code == 1 and "exclude each other" in res.output
    res = runner.invoke(app, ["memory", "causal", "--method", "kivi", "--json"])
    assert res.exit_code == 0, res.output
    stored = json.loads(Path("results/kivi.json").read_text())["runs"]
    ratios = [r["metrics"]["kv_bytes_ratio"] for r in stored]
    full = memory.kv_bytes_per_token(memory.load_config("causal"), kv_bits=32)
    assert json.loads(res.output)["kv_bytes_per_token"] in {round(full * r) for r in ratios}
