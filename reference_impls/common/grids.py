"""Benchmark grids across methods: compositions, the quick CI grid, the perplexity-vs-tasks study, and
the re-run check of committed results.

- `COMPOSITIONS` → `results/compositions.json` (`atlas bench --compositions`): the combinations the
  literature reports (SparseGPT's joint 50% / 2:4 + 4-bit result; Wanda + AWQ; SliceGPT + GPTQ; GPTQ
  weights + KIVI cache) and the reverse orders where order is argued (quantize-then-prune vs
  prune-then-quantize: Harma et al., arXiv 2405.20935, argue sparsity must come first).
- `QUICK` (`atlas bench --quick`): a tiny grid (few calibration samples, few windows) that runs the
  machinery end to end in CI and checks every figure is finite; it writes nothing under results/.
- `task_agreement` → `results/task_agreement.json` (`atlas bench --task-agreement`): re-runs the
  committed causal-LM grid of the weight-compression methods with the task suite and measures where
  perplexity and the tasks disagree (rank correlations; discordant pairs beyond the tasks' noise).
- `rerun_check`: re-runs committed runs and compares the figures within a stated tolerance.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import random
import sys
from pathlib import Path

from reference_impls.common.bench import BENCH_EVAL_WINDOWS, RESULTS_DIR
from reference_impls.common.runner import run_method

G4 = {"bits": 4, "group_size": 128}  # the 4-bit g128 setting every quantization paper reports

COMPOSITIONS: list[tuple[str, dict]] = [
    ("sparsegpt+gptq", {"sparsity": 0.5, **{f"gptq.{k}": v for k, v in G4.items()}}),
    ("sparsegpt+gptq", {"prune_n": 2, "prune_m": 4, **{f"gptq.{k}": v for k, v in G4.items()}}),
    ("gptq+sparsegpt", {"sparsity": 0.5, **{f"gptq.{k}": v for k, v in G4.items()}}),
    ("wanda+gptq", {"sparsity": 0.5, **G4}),
    ("gptq+wanda", {"sparsity": 0.5, **G4}),
    ("wanda+awq", {"sparsity": 0.5, **G4}),
    ("slicegpt+gptq", {"sparsity": 0.25, **G4}),
    # pruning + distillation recovery: the pruned model learns from its dense original (the baseline in the
    # record, perplexity_no_distill, is the same pruned model recovered with cross-entropy alone)
    ("sparsegpt+kd", {"sparsity": 0.5, "max_steps": 100}),
    ("gptq+kivi", {"gptq.bits": 4, "gptq.group_size": 128, "kivi.bits": 2, "kivi.group_size": 32,
                   "residual_length": 32}),
]

QUICK: list[tuple[str, str, dict]] = [
    ("rtn", "causal", {"bits": 4, "group_size": 128}),
    ("wanda", "causal", {"sparsity": 0.5}),
    ("sparsegpt+gptq", "causal", {"sparsity": 0.5, "gptq.bits": 4, "gptq.group_size": 128}),
    ("rtn", "encoder", {"bits": 4}),
]
QUICK_SETTINGS = {"eval_windows": 4, "calib_samples": 8}


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def run_compositions(*, only: list[str] | None = None, path: Path | None = None) -> dict:
    """Run the composition grid on the causal LM (with tasks) and write results/compositions.json.

    `only`: composition names to (re-)run; the file's other runs are kept."""
    path = path or RESULTS_DIR / "compositions.json"
    previous = json.loads(path.read_text()) if path.exists() else {}
    runs = [r for r in previous.get("runs", []) if only and r["method"] not in only]
    for method, options in COMPOSITIONS:
        if only and method not in only:
            continue
        record = run_method(method, model="causal", eval_windows=BENCH_EVAL_WINDOWS, options=options,
                            tasks=True)
        m = record["metrics"]
        _log(f"{method} {options}: ppl {m['perplexity']:.3f} (fp {m['perplexity_fp']:.3f}), "
             f"{record['bits_per_weight']:.3f} bits/weight, {record['time_s']:.0f}s")
        runs.append(record)
        result = {"method": "compositions", "generated": _now(), "runs": runs}
        _write(path, result)  # after every run: a long grid keeps what it has
    return {"method": "compositions", "generated": _now(), "runs": runs}


def run_quick() -> list[dict]:
    """The CI grid; raises if a figure is missing or not finite."""
    records = []
    for method, model, options in QUICK:
        record = run_method(method, model=model, options=options, tasks=True, **QUICK_SETTINGS)
        m = record["metrics"]
        figures = [record["bits_per_weight"], *m["tasks"].values(),
                   *([m["perplexity"], m["perplexity_fp"]] if model == "causal" else [m["cosine"]])]
        bad = [f for f in figures if not isinstance(f, (int, float)) or not math.isfinite(f)]
        if bad:
            raise RuntimeError(f"quick bench: {method} on {model} gave non-finite figures {bad}")
        records.append(record)
        _log(f"quick {method} {model}: bits/weight {record['bits_per_weight']:.3f}, "
             + ", ".join(f"{k} {v:.3f}" for k, v in m["tasks"].items()))
    return records


# ---------------------------------------------------------------- perplexity vs tasks
AGREEMENT_MAX_TIME_S = 60.0  # committed compression time above which a run is left out of the study
AGREEMENT_ALWAYS = {("gptq", 4, 128), ("gptq", 3, 128)}  # GPTQ is slow on CPU but too central to omit
AGREEMENT_WINDOWS = 8  # the re-run's own perplexity check; the study uses the committed 128-window one
MIN_PPL_GAP = 0.01  # pairs whose perplexities differ by less than 1% are not called ordered


def _weight_runs(results_dir: Path) -> list[tuple[str, dict]]:
    """(method, committed run) of every causal-LM weight-compression run (no KV-cache or prompt
    policy: their quality is not in the weights the tasks read), cheap enough to re-run."""
    chosen = []
    for path in sorted(results_dir.glob("*.json")):
        if path.stem in ("compositions", "task_agreement", "search", "site", "perf"):
            continue
        data = json.loads(path.read_text())
        for run in data.get("runs", []) if isinstance(data, dict) else []:
            m = run.get("metrics", {})
            if run.get("model") != "causal" or "perplexity" not in m or "kv_bytes_peak" in m:
                continue
            o = run.get("options", {})
            key = (run["method"], o.get("bits"), o.get("group_size"))
            if run.get("time_s", 0) <= AGREEMENT_MAX_TIME_S or key in AGREEMENT_ALWAYS:
                chosen.append((run["method"], run))
    # round robin over methods: a study cut short still covers every method once before any twice
    count: dict[str, int] = {}
    ranked = []
    for method, run in chosen:
        ranked.append((count.get(method, 0), method, run))
        count[method] = count.get(method, 0) + 1
    return [(m, r) for _, m, r in sorted(ranked, key=lambda x: x[0])]


def _spearman(x: list[float], y: list[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).statistic)


def _stderr(p: float, n: int) -> float:
    return math.sqrt(max(p * (1 - p), 1e-12) / max(n, 1))


def agreement_stats(rows: list[dict]) -> dict:
    """Rank correlation of perplexity with each task across `rows` ({"perplexity", "tasks", "n_items"}),
    and the pairs ordered one way by perplexity (≥1% apart) and the other way by a task by more than
    two standard errors of the difference (binomial, per task item count)."""
    names = sorted({k for r in rows for k in r["tasks"]})
    neg_ppl = [-r["perplexity"] for r in rows]
    out: dict = {"n_runs": len(rows), "spearman_neg_perplexity": {}, "discordant": {}}
    for name in names:
        scores = [r["tasks"][name] for r in rows]
        out["spearman_neg_perplexity"][name] = _spearman(neg_ppl, scores)
        pairs, discordant = 0, []
        for i, a in enumerate(rows):
            for b in rows[i + 1 :]:
                lo, hi = (a, b) if a["perplexity"] < b["perplexity"] else (b, a)  # lo: better perplexity
                if hi["perplexity"] / lo["perplexity"] - 1 < MIN_PPL_GAP:
                    continue
                pairs += 1
                gap = hi["tasks"][name] - lo["tasks"][name]
                n = lo["n_items"].get(name, 1)
                se = math.hypot(_stderr(lo["tasks"][name], n), _stderr(hi["tasks"][name], n))
                if gap > 2 * se:
                    discordant.append({"better_perplexity": lo["label"], "better_task": hi["label"],
                                       "perplexity": [lo["perplexity"], hi["perplexity"]],
                                       "task": [lo["tasks"][name], hi["tasks"][name]], "gap_se": gap / se})
        discordant.sort(key=lambda d: -d["gap_se"])
        out["discordant"][name] = {"ordered_pairs": pairs, "n_discordant": len(discordant),
                                   "top": discordant[:5]}
    return out


def task_agreement(*, results_dir: Path = RESULTS_DIR, path: Path | None = None,
                   limit: int | None = None) -> dict:
    """Re-run the committed causal grid (weight methods) with tasks; write results/task_agreement.json."""
    path = path or results_dir / "task_agreement.json"
    previous = json.loads(path.read_text()) if path.exists() else {}
    done = {(r["method"], json.dumps(r["options"], sort_keys=True)): r for r in previous.get("rows", [])}
    rows = []
    chosen = _weight_runs(results_dir)
    for method, run in chosen[:limit]:
        key = (method, json.dumps(run["options"], sort_keys=True))
        if key in done:
            rows.append(done[key])
            continue
        record = run_method(method, model="causal", eval_windows=AGREEMENT_WINDOWS, options=run["options"],
                            tasks=True)
        m = record["metrics"]
        label = method + " " + " ".join(f"{k}={v}" for k, v in run["options"].items()
                                        if v not in (False, None) and k not in ("sym",))
        rows.append({"method": method, "options": run["options"], "label": label,
                     "perplexity": run["metrics"]["perplexity"],
                     "perplexity_fp": run["metrics"]["perplexity_fp"],
                     "perplexity_check": {"windows": AGREEMENT_WINDOWS, "rerun": m["perplexity"]},
                     "bits_per_weight": run.get("bits_per_weight"), "tasks": m["tasks"],
                     "tasks_fp": m["tasks_fp"], "n_items": m["tasks_detail"]["n_items"],
                     "accuracy_by_position": m["tasks_detail"]["accuracy_by_position"],
                     "context_recall_by_distance": m["tasks_detail"]["context_recall_by_distance"]})
        _log(f"agreement {label}: ppl {rows[-1]['perplexity']:.2f} tasks "
             + ", ".join(f"{k} {v:.3f}" for k, v in m["tasks"].items()))
        _write(path, {"generated": _now(), "rows": rows})
    result = {"generated": _now(), "eval_windows_perplexity": BENCH_EVAL_WINDOWS,
              "note": "perplexity from the committed results (128 held-out windows); tasks from a re-run "
                      "with the same options and seed", "rows": rows, "stats": agreement_stats(rows)}
    _write(path, result)
    return result


RERUN_METHODS = ("rtn", "magnitude", "wanda", "sparsegpt", "hqq", "nf4", "mx", "fp8")
RERUN_RTOL = 1e-3  # perplexity, relative: float summation order differs between machines and versions


def rerun_check(n: int = 2, *, seed: int = 0, results_dir: Path = RESULTS_DIR,
                methods: tuple[str, ...] = RERUN_METHODS) -> list[dict]:
    """Re-run `n` committed causal runs (a seeded choice among fast methods) on the same windows, options
    and seed; returns [{"label", "committed": run, "rerun": record}] for the caller to compare
    (bits per weight exactly, perplexities within `RERUN_RTOL`)."""
    pool = [(m, r) for m, r in _weight_runs(results_dir) if m in methods]
    picks = random.Random(seed).sample(pool, min(n, len(pool)))
    out = []
    for method, run in picks:
        record = run_method(method, model="causal", eval_windows=run["metrics"]["eval_windows"],
                            options=run["options"], seed=run.get("env", {}).get("seed", 0),
                            calib_samples=run.get("env", {}).get("calib_samples", 128))
        out.append({"label": f"{method} {run['options']}", "committed": run, "rerun": record})
    return out


# ---------------------------------------------------------------- `atlas bench` targets
def bench_compositions(papers_dir: Path) -> None:
    """`atlas bench compositions`: the composition grid → results/compositions.json."""
    run_compositions()


def bench_task_agreement(papers_dir: Path) -> None:
    """`atlas bench task-agreement`: the perplexity-vs-tasks study → results/task_agreement.json."""
    stats = task_agreement()["stats"]
    for name, rho in stats["spearman_neg_perplexity"].items():
        d = stats["discordant"][name]
        _log(f"{name}: Spearman(-ppl, task) {rho:+.3f}; {d['n_discordant']} of {d['ordered_pairs']} "
             f"perplexity-ordered pairs reversed beyond 2 SE")


def bench_quick(papers_dir: Path) -> None:
    """`atlas bench --quick`: the CI grid; writes .atlas/bench-quick.json, never results/."""
    records = run_quick()
    _write(Path(".atlas") / "bench-quick.json", {"generated": _now(), "runs": records})
