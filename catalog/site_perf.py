"""The Results page's speed table, from results/perf.json (`atlas bench perf`); nothing when absent."""

from __future__ import annotations

import json
from pathlib import Path

PERF_JSON = Path(__file__).resolve().parents[1] / "results" / "perf.json"


def _s(value) -> str:
    return f"{value:.2f}" if isinstance(value, int | float) else "–"


def _shape(part: dict) -> str:
    return "×".join(str(x) for x in part.get("shape") or ["?", "?"])


def _rows(perf: dict) -> list[tuple[str, object, object]]:
    """(what, ours, reference) in seconds unless the label says otherwise."""
    rows: list[tuple[str, object, object]] = []
    g = perf.get("gptq_layer") or {}
    if "gptq_s" in g:
        what = f"GPTQ {g.get('bits')}-bit g{g.get('group_size')}, one {_shape(g)} layer, vs the official loop"
        rows.append((what, g["gptq_s"], g.get("straightforward_s")))
    sg = perf.get("sparsegpt_layer") or {}
    for p in sg.get("patterns", []):
        pattern = f"{p['prune_n']}:{p['prune_m']}" if p.get("prune_n") else f"{p.get('sparsity', 0.5):.0%}"
        what = f"SparseGPT {pattern}, one {_shape(sg)} layer, vs the official loop"
        rows.append((what, p.get("sparsegpt_s"), p.get("straightforward_s")))
    h = perf.get("hessian_accumulation") or {}
    if "accumulate_s" in h:
        size = f"{h.get('tokens')} tokens × {h.get('in_features')} inputs"
        rows.append((f"Hessian accumulation, {size}, vs bare xᵀx GEMM", h["accumulate_s"],
                     h.get("gemm_floor_s")))
    for method, r in (perf.get("atlas_run") or {}).items():
        if "wall_s_min" in r:
            # the phases of the fastest run (files written before 2026-12-03: the last run's)
            fastest = r.get("fastest") if isinstance(r.get("fastest"), dict) else {}
            up = fastest.get("startup_s")
            startup = f"start-up {_s(up)} s, " if isinstance(up, int | float) else ""
            rows.append((f"`atlas run {method}` end to end ({r.get('eval_windows')} held-out windows, "
                         f"{r.get('eval_dtype')}; {startup}compression "
                         f"{_s(fastest.get('compress_s', r.get('compress_s')))} s, evaluation "
                         f"{_s(fastest.get('eval_s', r.get('eval_s')))} s)", r["wall_s_min"], None))
    s = perf.get("search_site") or {}
    for key, label in (("catalog", f"search p50, catalog ({s.get('records')} records), ms"),
                       ("synthetic_100000", "search p50, 100,000 synthetic records, ms")):
        hybrid = (s.get(key) or {}).get("hybrid") or {}
        if "p50_ms" in hybrid:
            rows.append((label, hybrid["p50_ms"], None))
    lc = perf.get("llmcompressor") or {}
    if lc.get("ran") and isinstance(lc.get("ours_s"), int | float):
        ppl = f"perplexity {_s(lc.get('perplexity_ours'))} vs {_s(lc.get('perplexity_llmcompressor'))}"
        tool = f"llmcompressor {lc.get('llmcompressor', '?')}"
        rows.append((f"GPTQ W4A16 g128 on the causal LM, reference = {tool} one-shot, same calibration "
                     f"({ppl}, float32 held-out)", lc["ours_s"],
                     lc.get("llmcompressor_s")))
    cold = (s.get("cold_atlas_search") or {}).get("atlas_search_s_median")
    if cold is not None:
        rows.append(("cold `atlas search` (fresh process, index built)", cold, None))
    if "site_build_warm_s" in s:
        rows.append(("site build (warm cache)", s["site_build_warm_s"], None))
    return rows


def perf_section(path: Path = PERF_JSON) -> list[str]:
    """Markdown lines of the speed table, or [] when results/perf.json is missing or unreadable."""
    try:
        perf = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return []
    rows = _rows(perf) if isinstance(perf, dict) else []
    if not rows:
        return []
    machine = perf.get("machine") or {}
    load = machine.get("load_at_start") or [None]
    lines = ["## Speed", "",
             f"From `results/perf.json` (`atlas bench perf`, {perf.get('generated', '?')}, "
             f"{machine.get('cpus', '?')} CPUs, {machine.get('torch_threads', '?')} torch threads, "
             f"load average {_s(load[0])} at the start on a shared machine). The reference column is a "
             "straightforward transcription of the official loop (or the bare GEMM) on the same input, "
             "timed alternately; ratio < 1 means ours is faster. Absolute times move with the load; the "
             "ratios much less.", "",
             "| measurement | ours (s) | reference (s) | ratio |", "|---|---:|---:|---:|"]
    for what, ours, ref in rows:
        ratio = ours / ref if isinstance(ours, int | float) and isinstance(ref, int | float) and ref else None
        lines.append(f"| {what} | {_s(ours)} | {_s(ref)} | {_s(ratio)} |")
    return [*lines, ""]
