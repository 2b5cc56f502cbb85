"""Shared machinery: layer walking on every tiny architecture, statistics against an independent
full-model capture, storage arithmetic, the registry and the `atlas impls` / `atlas run` commands."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from reference_impls.common import layerwise, registry, storage
from reference_impls.common.adapters import adapter_for, get_weight
from reference_impls.common.models import TINY_ARCHS, tiny_model

pytestmark = pytest.mark.filterwarnings("ignore")


def batches_for(arch: str, n: int = 3):
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        ids = torch.randint(0, 128, (2, 12), generator=g)
        batch = {"input_ids": ids}
        if arch == "bert":  # padding in the second row: the mask must reach every block
            mask = torch.ones_like(ids)
            mask[1, 8:] = 0
            batch["attention_mask"] = mask
        out.append(batch)
    return out


def full_forward_inputs(model, adapter, batches):
    """Inputs of every block linear from ordinary forward passes of the whole model (the oracle)."""
    seen: dict[str, list[torch.Tensor]] = {}
    handles = []
    for i, block in enumerate(adapter.blocks(model)):
        for name, lin in adapter.linears(block).items():
            key = f"{i}.{name}"
            seen[key] = []
            handles.append(
                lin.register_forward_hook(lambda _m, inp, _o, k=key: seen[k].append(inp[0].detach()))
            )
    with torch.no_grad():
        for b in batches:
            model(**b)
    for h in handles:
        h.remove()
    return {k: torch.cat([x.reshape(-1, x.shape[-1]) for x in v]) for k, v in seen.items()}


def zero_first_linear(ctx):
    if ctx.index == 0:
        first = next(iter(ctx.linears))
        ctx.set_weight(first, torch.zeros_like(ctx.weight(first)))


@pytest.mark.parametrize("arch", TINY_ARCHS)
@pytest.mark.parametrize("edit", [None, zero_first_linear], ids=["unchanged", "block0-edited"])
def test_walk_statistics_match_a_full_forward(arch, edit):
    # The oracle runs the finished model end to end: when block 0 is edited during the walk, block 1
    # must have been calibrated on the edited block's outputs (the sequential scheme).
    model = tiny_model(arch)
    adapter = adapter_for(model)
    batches = batches_for(arch)
    stats = {}

    def process(ctx):
        for name, s in ctx.stats.items():
            stats[f"{ctx.index}.{name}"] = (
                s.n_tokens, s.hessian.clone(), s.input_norm.clone(), s.act_max.clone(),
                s.act_mean_abs.clone(), s.act_mean.clone(), s.act_var.clone(),
            )
        if edit is not None:
            edit(ctx)

    layerwise.walk_blocks(model, adapter, batches, process, stats=layerwise.STAT_NAMES)
    oracle = full_forward_inputs(model, adapter, batches)
    assert set(stats) == set(oracle)
    for key, x in oracle.items():
        n, hessian, norm, amax, mean_abs, mean, var = stats[key]
        if edit is not None and key.startswith("0."):
            continue  # block 0's statistics were taken before the edit
        assert n == x.shape[0]
        torch.testing.assert_close(hessian, 2.0 / n * x.t() @ x, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(norm, x.norm(dim=0), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(amax, x.abs().amax(0))
        torch.testing.assert_close(mean_abs, x.abs().mean(0), rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(mean, x.double().mean(0).float(), rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(var, x.double().var(0).float(), rtol=1e-4, atol=1e-6)


def test_running_moments_are_numerically_sound():
    # a large offset and uneven batches: a float32 Σx² - (Σx)²/n would lose every digit of the variance
    g = torch.Generator().manual_seed(0)
    x = 1e4 + torch.randn(1000, 6, generator=g)
    s = layerwise.LinearStats(6, frozenset({"act_mean", "act_var"}), torch.device("cpu"))
    for chunk in torch.split(x, [1, 7, 300, 2, 690]):
        s.add(chunk)
    torch.testing.assert_close(s.act_mean, x.double().mean(0).float())
    torch.testing.assert_close(s.act_var.double(), x.double().var(0), rtol=1e-5, atol=0)


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_walk_with_rtn_returns_a_model_that_runs(arch):
    from reference_impls.quantization.rtn import rtn_quantize

    model = tiny_model(arch)
    adapter = adapter_for(model)
    batches = batches_for(arch)
    with torch.no_grad():
        before = model(**batches[0])[0]

    def process(ctx):
        for name in ctx.linears:
            ctx.set_weight(name, rtn_quantize(ctx.weight(name), bits=3))

    layerwise.walk_blocks(model, adapter, batches, process, stats=())
    with torch.no_grad():
        after = model(**batches[0])[0]
    assert after.shape == before.shape and torch.isfinite(after).all()
    assert not torch.allclose(after, before)  # the blocks really were quantized


def test_gpt2_conv1d_is_seen_in_linear_layout():
    model = tiny_model("gpt2")
    block = adapter_for(model).blocks(model)[0]
    assert get_weight(block.attn.c_attn).shape == (3 * 64, 64)  # (out, in) although Conv1D stores (in, out)
    assert get_weight(block.mlp.c_proj).shape == (64, 160)


def test_adapter_input_groups_name_real_modules():
    for arch in TINY_ARCHS:
        model = tiny_model(arch)
        adapter = adapter_for(model)
        block = adapter.blocks(model)[0]
        grouped = [n for g in adapter.input_groups for n in g.linears]
        assert sorted(grouped) == sorted(adapter.linear_names)
        for g in adapter.input_groups:
            if g.prev is not None:
                block.get_submodule(g.prev)


def test_storage_arithmetic_by_hand():
    # 4-bit, groups of 128, asymmetric: 4 + (16-bit scale + 4-bit zero) / 128 = 4.15625 bits per weight
    assert storage.quantized_bits(4096, 4096, bits=4, group_size=128) / 4096**2 == pytest.approx(4.15625)
    assert storage.quantized_bits(10, 300, bits=3, group_size=128, sym=True) == 10 * 300 * 3 + 10 * 3 * 16
    # a 2:4-sparse 8x16 matrix, stored as encoded: half the values at 16 bits, plus 2 bits of position
    # per kept value (N:M), or a 1-bit mask per weight (bitmask; the same size here, N:M wins the tie)
    w = torch.arange(1.0, 129.0).reshape(8, 16) * torch.tensor([1.0, 0.0, 1.0, 0.0]).repeat(4)
    ledger = storage.StorageLedger()
    assert ledger.add_sparse("nm", w, prune_n=2, prune_m=4) == "2:4"
    assert ledger.add_sparse("mask", w) == "bitmask"
    assert ledger.layers == {"nm": (128, 64 * 16 + 64 * 2), "mask": (128, 64 * 16 + 128)}
    assert (
        ledger.add_sparse("dense", torch.ones(8, 16)) == "dense"
        and ledger.layers["dense"] == (128, 128 * 16)
    )
    ledger = storage.StorageLedger()
    ledger.add_quantized("a", 4, 8, bits=8)
    assert ledger.bits_per_weight() == pytest.approx(8 + 24 / 8)
    assert ledger.model_bits(total_params=100) == 4 * 8 * 8 + 4 * 24 + 68 * 16
    assert math.isclose(storage.StorageLedger().bits_per_weight(), 16.0)
    # structured pruning: a 4x8 matrix cut to 4x5 and a removed 4x8 one; the model now holds 20 + 48
    # other parameters, and none of the 32 + 32 dense weights may be counted a second time
    ledger = storage.StorageLedger()
    ledger.add("cut", 32, 20 * 16, held=20)
    ledger.add("gone", 32, 0, held=0)
    assert ledger.model_bits(total_params=20 + 48) == 20 * 16 + 48 * 16


def test_structured_pruners_store_every_remaining_weight_once():
    # weight_bytes of a pruned model at 16 bits is twice its parameter count (was negative for minitron)
    from reference_impls.common.runner import run_method

    for name, options in (("shortgpt", {"n_remove": 2}), ("slicegpt", {"sparsity": 0.25})):
        rec = run_method(name, model="causal", eval_windows=2, calib_samples=4, options=options)
        assert rec["metrics"]["weight_bytes"] == 2 * rec["params"], name


def test_registry_lists_rtn_and_gptq_with_their_papers():
    methods = {m.name: m for m in registry.all_methods()}
    assert methods["gptq"].papers == ("gptq",) and methods["gptq"].fidelity == "exact"
    assert methods["rtn"].papers == ("case-for-4bit",)
    assert methods["gptq"].options["group_size"].default == -1
    with pytest.raises(registry.UnknownMethodError, match="did you mean 'gptq'"):
        registry.get("gtpq")


def test_registry_finds_each_method_module_without_importing_the_others():
    # the text scan behind `atlas run NAME` must name the module that really registers NAME
    for m in registry.all_methods():
        assert registry._module_declaring(m.name) == m.module, m.name
    assert registry._module_declaring("no-such-method") is None
    code = ("import sys; from reference_impls.common import registry; m = registry.get('rtn'); "
            "print(m.module, sorted(k for k in sys.modules if k.startswith('reference_impls.')"
            " and k.count('.') == 2 and '.common.' not in k))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split(" ", 1) == ["reference_impls.quantization.rtn", "['reference_impls.quantization.rtn']\n"]


def test_method_option_parsing():
    from catalog.commands.impl_cmds import parse_method_options

    declared = registry.get("gptq").options
    argv = ["--bits", "3", "--group-size=64", "--act-order", "--no-sym", "--damp", "0.1"]
    got = parse_method_options(argv, declared)
    assert got == {"bits": 3, "group_size": 64, "act_order": True, "sym": False, "damp": 0.1}
    assert parse_method_options(["--act-order", "false"], declared) == {"act_order": False}
    with pytest.raises(ValueError, match="--sparsity.*valid options: --bits"):
        parse_method_options(["--sparsity", "0.5"], declared)
    with pytest.raises(ValueError, match="--bits"):
        parse_method_options(["--bits", "four"], declared)


def test_cli_impls_json_and_run_errors():
    from catalog.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["impls", "--json"])
    assert res.exit_code == 0, res.output
    listed = {m["name"]: m for m in json.loads(res.stdout)}
    assert {"name", "family", "papers", "fidelity", "options"} <= set(listed["gptq"])
    res = runner.invoke(app, ["run", "rtn", "--bogus", "1"])
    assert res.exit_code == 1 and "valid options" in res.stderr
    res = runner.invoke(app, ["run", "nosuchmethod"])
    assert res.exit_code == 1
    res = runner.invoke(app, ["run", "rtn", "--model", "/nonexistent/model/dir"])
    assert res.exit_code == 2, res.output


@pytest.mark.slow
def test_run_saves_a_model_that_reloads_with_the_same_perplexity(tmp_path):
    from reference_impls.common import data, evaluate
    from reference_impls.common.models import load_model
    from reference_impls.common.runner import run_method

    rec = run_method(
        "rtn", model="causal", eval_windows=4, save=tmp_path, options={"bits": 4, "group_size": 128}
    )
    assert rec["metrics"]["perplexity"] > rec["metrics"]["perplexity_fp"]  # 4-bit costs something
    reloaded = load_model(str(tmp_path))
    ppl = evaluate.perplexity(reloaded.model, data.heldout_windows(reloaded, max_windows=4))
    assert ppl == pytest.approx(rec["metrics"]["perplexity"], rel=1e-5)


def test_bench_reruns_one_model_and_keeps_the_others(monkeypatch):
    from reference_impls.common import bench

    calls = []

    def fake_run(name, *, model, eval_windows, options, tasks=False, papers_dir="papers"):
        calls.append((model, dict(options)))
        merged = {k: o.default for k, o in registry.get(name).options.items()} | dict(options)
        return {"method": name, "model": model, "options": merged,
                "metrics": {"perplexity": 1.0, "perplexity_fp": 1.0},
                "bits_per_weight": 4.0, "time_s": 0.0}

    monkeypatch.setattr(bench, "run_method", fake_run)
    rtn = registry.get("rtn")
    defaults = {k: o.default for k, o in rtn.options.items()}
    old_encoder = {"method": "rtn", "model": "encoder", "options": defaults | rtn.bench[0],
                   "metrics": {"cosine": 0.5}}
    old_causal = {"method": "rtn", "model": "causal", "options": defaults | rtn.bench[0],
                  "metrics": {"perplexity": 9.0}}
    previous = {"method": "rtn", "runs": [old_causal, old_encoder], "layer_note": "kept"}

    result = bench.bench_method(rtn, models=("causal",), previous=previous, extras=False)
    assert calls == [("causal", dict(o)) for o in rtn.bench]  # every causal grid point re-run
    assert old_encoder in result["runs"] and old_causal not in result["runs"]
    assert [r["model"] for r in result["runs"]] == ["causal"] * len(rtn.bench) + ["encoder"]
    assert result["layer_note"] == "kept"

    calls.clear()
    result = bench.bench_method(rtn, previous=previous, missing_only=True, extras=False)
    assert ("causal", dict(rtn.bench[0])) not in calls and ("encoder", dict(rtn.bench[0])) not in calls
    assert len(calls) == 2 * len(rtn.bench) - 2
    assert old_causal in result["runs"] and old_encoder in result["runs"]


def test_cli_bench_rejects_unknown_targets_and_models():
    from catalog.cli import app

    out = CliRunner().invoke(app, ["bench", "gptqq"])
    assert out.exit_code == 1 and "unknown bench target 'gptqq' (did you mean 'gptq'?)" in out.output
    out = CliRunner().invoke(app, ["bench", "rtn", "--model", "opt"])
    assert out.exit_code == 1 and "--model opt: choose causal or encoder" in out.output
