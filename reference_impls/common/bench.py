"""The benchmark grid behind `atlas bench`: every method's declared option sets on its models.

Writes one file per method, `results/<method>.json`:
`{"method", "papers", "fidelity", "generated", "runs": [result records (runner.run_method)], ...}`,
plus method-specific extras (GPTQ: `layer_timing`, the 4096×4096 single-layer timing).
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from pathlib import Path

from reference_impls.common import registry
from reference_impls.common.runner import run_method

RESULTS_DIR = Path("results")
# Causal-LM runs score the first 128 held-out windows (32,768 tokens): a 2-core CPU runs the whole
# grid in minutes, and the count is in every record (metrics.eval_windows) for anyone who wants more.
BENCH_EVAL_WINDOWS = 128

# Families whose methods change generation (the cache, the prompt), not the weights the task suite
# reads: their runs would score exactly the uncompressed model's tasks, so they are not scored.
NO_TASK_FAMILIES = ("kv_cache", "prompt")

# Extra measurements per method: name -> (module, function returning a JSON-serializable dict).
EXTRAS = {"gptq": ("reference_impls.common.gptq_timing", "layer_timing")}


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _same_run(run: dict, method: registry.Method, model: str, options: dict) -> bool:
    """Whether a stored run is this grid point: its options equal the defaults updated by `options`."""
    wanted = method.defaults() | dict(options)
    return run.get("model") == model and run.get("options") == wanted


def bench_method(method: registry.Method, *, models: tuple[str, ...] | None = None,
                 eval_windows: int | None = BENCH_EVAL_WINDOWS,
                 extras: bool = True, previous: dict | None = None, missing_only: bool = False,
                 papers_dir: str | Path = "papers") -> dict:
    """Run the method's grid on `models` (default: its bench models).

    Runs of `previous` (the method's existing results file) on models not re-run are kept, so that
    retraining the causal LM needs `atlas bench --model causal` only; with `missing_only`, grid
    points that already have a run are kept as well.
    """
    models = tuple(models or method.bench_models)
    kept = [r for r in (previous or {}).get("runs", []) if r.get("model") not in models]
    runs = []
    grid = list(method.bench) or [{}]
    for model in models:
        if model not in method.bench_models:
            continue
        for options in grid:
            if missing_only:
                old = [r for r in (previous or {}).get("runs", []) if _same_run(r, method, model, options)]
                if old:
                    runs.append(old[0])
                    continue
            t0 = time.perf_counter()
            record = run_method(method.name, model=model, eval_windows=eval_windows, options=options,
                                tasks=method.family not in NO_TASK_FAMILIES, papers_dir=papers_dir)
            runs.append(record)
            m = record["metrics"]
            metric = (f"ppl {m['perplexity']:.3f} (fp {m['perplexity_fp']:.3f})" if "perplexity" in m
                      else f"cos {m['cosine']:.4f} top10 {m['retrieval_agreement']:.3f}")
            _log(f"{method.name} {model} {options}: {metric}, {record['bits_per_weight']:.3f} bits/weight, "
                 f"{record['time_s']:.1f}s compress, {time.perf_counter() - t0:.0f}s total")
    order = {m: i for i, m in enumerate(method.bench_models)}
    runs = sorted(kept + runs, key=lambda r: order.get(r.get("model"), len(order)))
    result = {"method": method.name, "papers": list(method.papers), "fidelity": method.fidelity,
              "generated": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "runs": runs}
    if previous:
        result.update({k: v for k, v in previous.items() if k not in result})
    # A partial re-run keeps the previous extra measurement rather than repeating it.
    partial = missing_only or set(models) != set(method.bench_models)
    if extras and method.name in EXTRAS and not (partial and EXTRAS[method.name][1] in result):
        import importlib

        module, func = EXTRAS[method.name]
        _log(f"{method.name}: {module}.{func} ...")
        result[func] = getattr(importlib.import_module(module), func)()
    return result


def _previous_results(path: Path) -> dict | None:
    """The method's existing results file, or None when it is damaged: it is then moved aside to
    `<name>.json.damaged` (kept for the user, never overwritten unseen) and the grid runs in full."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = None
    if isinstance(data, dict) and isinstance(data.get("runs", []), list) \
            and all(isinstance(r, dict) for r in data.get("runs", [])):
        return data
    aside = path.with_name(path.name + ".damaged")
    path.replace(aside)
    _log(f"warning: {path} is not a results file; moved to {aside}, every grid point runs again")
    return None


def run_bench(
    methods: list[str], *, models: tuple[str, ...] | None = None, missing_only: bool = False,
    papers_dir: str | Path = "papers",
) -> None:
    """Benchmark the named methods (all registered ones when empty) and write results/<method>.json."""
    chosen = [registry.get(name) for name in methods] if methods else registry.all_methods()
    RESULTS_DIR.mkdir(exist_ok=True)
    for method in chosen:
        path = RESULTS_DIR / f"{method.name}.json"
        previous = None
        if path.exists() and (models or missing_only):
            previous = _previous_results(path)
        result = bench_method(method, models=models, previous=previous, missing_only=missing_only,
                              papers_dir=papers_dir)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        tmp.replace(path)
        _log(f"wrote {path}")
