"""`atlas bench perf` → results/perf.json: how long things take, and against what.

- layer level, one 4096×4096 layer, the same W and H for both sides, solves alternated, minimum of
  `repeats`: GPTQ against a straightforward reading of the official loop (common/gptq_timing.py) and
  SparseGPT (50% and 2:4) against one of the official `fasterprune` loop (common/sparsegpt_timing.py);
  ratios < 1 mean ours is faster;
- Hessian accumulation (layerwise.LinearStats, the path every second-order method calibrates through)
  against the bare GEMM floor xᵀx on the same chunks;
- `atlas run` end to end (fresh process, reference evaluation cached) for rtn, gptq, sparsegpt on the
  causal LM, full held-out set;
- search: warm p50/p95 on the catalog and on 100,000 synthetic records, cold `atlas search`
  (catalog/search_bench.py's own measurements, on the existing index cache); the site build (warm);
- the load average before and after every part: the machine is shared, so absolute times are noisy
  and the alternated ratios are the figures to compare.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

RESULTS = Path("results") / "perf.json"
RUN_METHODS = ("rtn", "gptq", "sparsegpt")


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def hessian_vs_gemm(*, n_in: int = 4096, chunk: int = 2048, chunks: int = 8, repeats: int = 3) -> dict:
    """Seconds to accumulate H over `chunks` inputs of `chunk` tokens, against xᵀx alone on them."""
    from reference_impls.common.layerwise import LinearStats

    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(chunk, n_in, generator=g) for _ in range(chunks)]
    ours, floor = [], []
    for _ in range(repeats):
        stats = LinearStats(in_features=n_in, want=frozenset({"hessian"}), device=torch.device("cpu"))
        t = time.perf_counter()
        for x in xs:
            stats.add(x)
        ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        for x in xs:
            torch.mm(x.t(), x)
        floor.append(time.perf_counter() - t)
    return {"in_features": n_in, "tokens": chunk * chunks, "chunk_tokens": chunk,
            "accumulate_s": min(ours), "gemm_floor_s": min(floor), "ratio": min(ours) / min(floor),
            "gflops_floor": 2 * chunk * chunks * n_in**2 / min(floor) / 1e9}


def _atlas() -> str:
    return shutil.which("atlas") or str(Path(sys.executable).with_name("atlas"))


def atlas_runs(methods=RUN_METHODS, repeats: int = 2) -> dict:
    """Wall time of `atlas run METHOD --model causal --json` in a fresh process, alternated."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    out: dict = {}
    subprocess.run([_atlas(), "run", "rtn", "--json"], capture_output=True, env=env, check=False)  # cache
    for _ in range(repeats):
        for method in methods:
            load = _load()
            t = time.perf_counter()
            proc = subprocess.run([_atlas(), "run", method, "--model", "causal", "--json"],
                                  capture_output=True, env=env, check=False, text=True)
            wall = time.perf_counter() - t
            row = out.setdefault(method, {"runs": []})
            if proc.returncode != 0:
                row["error"] = proc.stderr[-400:]
                continue
            rec = json.loads(proc.stdout)
            m = rec["metrics"]
            # the phases of this run: start-up (process start to compression; None where /proc is
            # missing), compression, evaluation, and the rest (figures, JSON, shutdown, process spawn)
            age = rec["env"].get("process_age_s")
            row["runs"].append({"wall_s": round(wall, 2), "load_1m": load, "startup_s": age,
                                "compress_s": round(rec["time_s"], 2), "eval_s": round(m["eval_time_s"], 2),
                                "after_eval_s": None if age is None else
                                round(wall - age - rec["time_s"] - m["eval_time_s"], 2)})
            row.update(perplexity=m["perplexity"], perplexity_fp=m["perplexity_fp"],
                       eval_dtype=m.get("eval_dtype"), eval_windows=m["eval_windows"],
                       reference_cached=m.get("eval_reference_cached"))
    for row in out.values():
        if row["runs"]:
            row["fastest"] = min(row["runs"], key=lambda r: r["wall_s"])
            row["wall_s_min"] = row["fastest"]["wall_s"]
    return out


def search_and_site(papers: Path) -> dict:
    """search_bench's latency figures and site_bench's build, on the existing `.atlas` index cache."""
    from catalog import search_bench, site_bench
    from catalog.search import Searcher

    cache = Path(os.environ.get("ATLAS_CACHE", ".atlas"))
    records, _ = search_bench.catalog_records(papers)
    usable = search_bench.usable_queries(search_bench.load_eval(), {r.id for r in records})
    queries = [q["query"] for q in usable]
    searcher = Searcher(records, cache_dir=cache, progress=False)
    out = {"records": len(records), "load_before": _load()}
    out["catalog"] = search_bench.latency(searcher, queries)
    syn_records, syn_dense = search_bench.synthetic(records, searcher.dense_index(), 100_000)
    big = Searcher(syn_records, cache_dir=None, dense=syn_dense, encoder=searcher.encoder)
    out["synthetic_100000"] = search_bench.latency(big, queries, repeat=1)
    del big, syn_records, syn_dense
    out["cold_atlas_search"] = search_bench.cold_cli(papers, cache, runs=3)
    before = os.environ.get("ATLAS_CACHE")
    try:
        out["site_build_warm_s"] = round(site_bench.timed_build(papers, cache), 2)
    finally:
        if before is None:
            os.environ.pop("ATLAS_CACHE", None)
        else:
            os.environ["ATLAS_CACHE"] = before
    out["load_after"] = _load()
    return out


LLMC_OPTIONS = {"bits": 4, "group_size": 128, "sym": True, "act_order": True, "static_groups": True,
                "damp": 0.01, "block_size": 128}  # ours, set to llmcompressor's W4A16 GPTQ recipe
LLMC_VENV = Path(".venv-llmcompressor")


def llmcompressor_python() -> Path | None:
    """The interpreter of the separate llmcompressor environment (`make llmcompressor`), if there is one:
    `$ATLAS_LLMCOMPRESSOR_PYTHON`, else `.venv-llmcompressor/bin/python`."""
    given = os.environ.get("ATLAS_LLMCOMPRESSOR_PYTHON")
    path = Path(given) if given else LLMC_VENV / "bin" / "python"
    return path if path.is_file() else None


NO_LLMCOMPRESSOR = ("no llmcompressor environment: llmcompressor 0.14.0.1 accepts torch 2.13.0 but pins "
                    "transformers<=5.17.0, older than the project's, so it cannot sit in .venv; `make "
                    "llmcompressor` builds .venv-llmcompressor beside it (or set ATLAS_LLMCOMPRESSOR_PYTHON)")


def llmcompressor_vs_ours(model: str = "causal", calib_samples: int = 128, seed: int = 0,
                          timeout: int = 3600) -> dict:
    """llmcompressor's one-shot GPTQ (scripts/llmcompressor_gptq.py, in its own environment) and ours on
    the same model and the same calibration token ids: compression time and held-out perplexity, both
    models scored by the same evaluation (float32, all held-out windows)."""
    import tempfile

    from safetensors.torch import load_file, save_file

    from reference_impls.common import data, evaluate, runner
    from reference_impls.common.models import load_model, resolve

    python = llmcompressor_python()
    if python is None:
        return {"ran": False, "why": NO_LLMCOMPRESSOR}
    load = _load()
    loaded = load_model(model)
    batches = data.causal_calibration(loaded, n_samples=calib_samples, seed=seed)
    ids = torch.cat([b["input_ids"] for b in batches])
    script = Path(__file__).resolve().parents[2] / "scripts" / "llmcompressor_gptq.py"
    with tempfile.TemporaryDirectory() as tmp:
        calib, out = Path(tmp) / "calib.safetensors", Path(tmp) / "weights.safetensors"
        save_file({"input_ids": ids.contiguous()}, str(calib))
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": ""}
        t = time.perf_counter()
        proc = subprocess.run([str(python), str(script), resolve(model)[0], str(calib), str(out)],
                              capture_output=True, text=True, env=env, timeout=timeout, check=False)
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            return {"ran": False,
                    "why": f"llmcompressor failed (exit {proc.returncode}): {proc.stderr[-400:]}"}
        info = json.loads(proc.stdout.strip().splitlines()[-1])
        weights = load_file(str(out))
    state = loaded.model.state_dict()
    unknown = sorted(set(weights) - set(state))
    if unknown or not weights:
        return {"ran": False, "why": f"llmcompressor's weights do not match the model: {unknown[:3]}"}
    windows = data.heldout_windows(loaded)
    with torch.no_grad():
        for name, w in weights.items():
            state[name].copy_(w)
    theirs = evaluate.perplexity(loaded.model, windows)
    ours = runner.run_method("gptq", model=model, calib_samples=calib_samples, seed=seed,
                             options=dict(LLMC_OPTIONS))
    return {"ran": True, **info, "load_1m": load, "llmcompressor_process_s": round(wall, 2),
            "llmcompressor_s": info["oneshot_s"], "ours_s": ours["time_s"],
            "ratio": ours["time_s"] / info["oneshot_s"],
            "perplexity_llmcompressor": theirs, "perplexity_ours": ours["metrics"]["perplexity"],
            "perplexity_fp": ours["metrics"]["perplexity_fp"], "eval_windows": int(windows.shape[0]),
            "eval_dtype": "float32",
            "options_ours": LLMC_OPTIONS,
            "recipe_llmcompressor": "GPTQModifier(targets='Linear', scheme='W4A16', ignore=['lm_head'], "
                                    "dampening_frac=0.01, block_size=128, actorder='static')",
            "calibration": f"{calib_samples} windows of {ids.shape[1]} tokens, seed {seed}: the same token "
                           "ids for both; each tool's time covers its own calibration passes and solves"}


def _part(result: dict, name: str, fn) -> None:
    _say(f"perf: {name} (load {_load()}) ...")
    t = time.perf_counter()
    try:
        result[name] = fn()
    except Exception as exc:  # noqa: BLE001  one failing part must not lose the others
        result[name] = {"error": f"{type(exc).__name__}: {exc}"}
    result[name + "_bench_s"] = round(time.perf_counter() - t, 1)
    _write(result)


def _write(result: dict) -> None:
    RESULTS.parent.mkdir(exist_ok=True)
    tmp = RESULTS.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(RESULTS)


def run_bench(papers_dir: Path, *, repeats: int | None = None, n: int | None = None) -> dict:
    """`n` (default 4096, env ATLAS_PERF_LAYER) sizes the square layer; `repeats` (default 3, env
    ATLAS_PERF_REPEATS) the alternated solves. A machine under heavy load may need a smaller layer."""
    from reference_impls.common import gptq_timing, sparsegpt_timing

    n = n or int(os.environ.get("ATLAS_PERF_LAYER", "4096"))
    repeats = repeats or int(os.environ.get("ATLAS_PERF_REPEATS", "3"))

    result = {"generated": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
              "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                          "torch": torch.__version__, "load_at_start": list(os.getloadavg()),
                          "omp": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY",
                                                                  "GOMP_SPINCOUNT")}}}
    # The solves do not depend on how many tokens built H: 16,384 keep this part affordable; the
    # accumulation itself is timed by hessian_vs_gemm.
    H = gptq_timing.calibration_hessian(n, 16384)[0]
    _part(result, "gptq_layer", lambda: gptq_timing.layer_timing(n=n, n_tokens=16384, repeats=repeats))
    _part(result, "sparsegpt_layer", lambda: sparsegpt_timing.layer_timing(n=n, n_tokens=16384,
                                                                           repeats=repeats, hessian=H))
    _part(result, "hessian_accumulation", lambda: hessian_vs_gemm(n_in=n))
    _part(result, "atlas_run", atlas_runs)
    _part(result, "search_site", lambda: search_and_site(Path(papers_dir)))
    _part(result, "llmcompressor", llmcompressor_vs_ours)
    result["machine"]["load_at_end"] = list(os.getloadavg())
    _write(result)
    _say(f"wrote {RESULTS}")
    return result
