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
            row = out.setdefault(method, {"wall_s": [], "load_1m": []})
            if proc.returncode != 0:
                row["error"] = proc.stderr[-400:]
                continue
            rec = json.loads(proc.stdout)
            m = rec["metrics"]
            row["wall_s"].append(round(wall, 2))
            row["load_1m"].append(load)
            # the phases of this run: start-up (process start to compression), compression, evaluation,
            # and the rest (figures, JSON, shutdown, process spawn)
            age = rec["env"].get("process_age_s")
            if age is not None:
                row.setdefault("startup_s", []).append(age)
                rest = wall - age - rec["time_s"] - m["eval_time_s"]
                row.setdefault("after_eval_s", []).append(round(rest, 2))
            row.update(compress_s=round(rec["time_s"], 2), eval_s=round(m["eval_time_s"], 2),
                       perplexity=m["perplexity"], perplexity_fp=m["perplexity_fp"],
                       eval_dtype=m.get("eval_dtype"), eval_windows=m["eval_windows"],
                       reference_cached=m.get("eval_reference_cached"))
    for row in out.values():
        if row["wall_s"]:
            row["wall_s_min"] = min(row["wall_s"])
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


def llmcompressor_status() -> dict:
    """Whether llmcompressor can run beside this torch (it is not a dependency; see the README)."""
    try:
        import llmcompressor  # noqa: F401
    except ImportError:
        return {"ran": False, "why": "not installed: llmcompressor 0.14.0.1 accepts torch 2.13.0 but pins "
                "transformers<=5.17.0 (pip install --dry-run llmcompressor would downgrade the project's "
                "transformers 5.24 and huggingface_hub), so it cannot sit beside this environment"}
    return {"ran": False, "why": "installed, but no comparison is wired up"}


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
    result["llmcompressor"] = llmcompressor_status()
    result["machine"]["load_at_end"] = list(os.getloadavg())
    _write(result)
    _say(f"wrote {RESULTS}")
    return result
