"""The Results page: every measured run in one sortable, filterable table, then the Pareto plots.

The table is plain HTML generated here (every record-derived string escaped with `html.escape`);
sorting and filtering are `site/javascripts/atlas-results.js`, a few lines of local script, so the page
works offline and without it (the table is complete, just unsorted). Numbers sort by a `data-v`
attribute holding the raw value.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable

from catalog.results import Run
from catalog.site_text import front_matter

PAPER_URL = "../papers/{}/"  # from /results/ (use_directory_urls) to a paper page


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _num_cell(value: float | None, digits: str = ".3f", scale: float = 1.0) -> str:
    if value is None:
        return '<td data-v=""></td>'
    return f'<td data-v="{value!r}">{value * scale:{digits}}</td>'


def method_link(run: Run, known: set[str], prefix: str = PAPER_URL) -> str:
    """The method name, linked to its (first) paper page when the catalog has it."""
    names = run.stages or (run.method,)
    papers = [p for p in run.papers if p in known]
    if run.stages:
        # a combination links each stage to the paper of the run file that names it, when known
        parts = [_e(n) for n in names]
        return "+".join(parts) + "".join(f' <a href="{_e(prefix.format(p))}">[{_e(p)}]</a>' for p in papers)
    if papers:
        return f'<a href="{_e(prefix.format(papers[0]))}">{_e(run.method)}</a>'
    return _e(run.method)


def _quality_cell(run: Run) -> str:
    label, value, ref = run.quality
    if value is None:
        return '<td data-v=""></td>'
    title = f"{label}; uncompressed {ref:.4g}" if ref is not None else label
    return f'<td data-v="{value!r}" title="{_e(title)}">{value:.3f}</td>'


def _delta_cell(run: Run) -> str:
    _, value, ref = run.quality
    return _num_cell(None if value is None or not ref else (value - ref) / ref, "+.1f", 100)


def _task_cell(run: Run, name: str) -> str:
    value, ref = run.tasks.get(name), run.tasks_fp.get(name)
    if value is None or ref is None:
        return _num_cell(value)
    return f'<td data-v="{value!r}" title="uncompressed {ref:.3f}">{value:.3f}</td>'


def _metric(key: str) -> Callable[[Run], str]:
    return lambda r: _num_cell(_float(r.metrics.get(key)))


def _other_metrics(run: Run) -> str:
    """Numeric metrics the fixed columns do not show, as a tooltip-sized list."""
    shown = {"perplexity", "perplexity_fp", "perplexity_kv", "perplexity_kv_full", "perplexity_compressed",
             "perplexity_full_context", "cosine", "retrieval_agreement", "sparsity", "weight_bytes",
             "peak_memory_mb", "energy_per_token_j", "next_token_kl", "tasks", "tasks_fp", "kv_bytes_ratio"}
    items = [(k, v) for k, v in sorted(run.metrics.items())
             if k not in shown and isinstance(v, int | float) and not isinstance(v, bool)]
    return "; ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in items)


def _more_cell(run: Run) -> str:
    items = _other_metrics(run)
    n = items.count("; ") + 1 if items else 0
    return f'<td class="atlas-more" title="{_e(items)}">{n} more</td>' if n else "<td></td>"


Column = tuple[str, str, Callable[[Run], str]]  # header, tooltip, cell html


def setting_keys_of(runs: list[Run]) -> dict[str, list[str]]:
    """method -> the option keys its setting cell shows: the budget options, then any other option whose
    value differs between the method's runs (so two runs of one method never look the same)."""
    from catalog.results import budget_keys

    out: dict[str, list[str]] = {}
    for method in {r.method for r in runs}:
        options = [r.options for r in runs if r.method == method]
        budget = budget_keys({k: None for o in options for k in o})
        keys = {k for o in options for k in o} - set(budget)
        varying = sorted(k for k in keys if len({repr(o.get(k)) for o in options}) > 1)
        out[method] = budget + varying
    return out


def columns(task_names: list[str], known: set[str], setting_keys: dict[str, list[str]]) -> list[Column]:
    cols: list[Column] = [
        ("method", "registered method; links to its paper", lambda r: f"<td>{method_link(r, known)}</td>"),
        ("family", "reference_impls/ family", lambda r: f"<td>{_e(r.family)}</td>"),
        ("model", "causal: the project's Llama LM; encoder: all-MiniLM-L6-v2",
         lambda r: f"<td>{_e(r.model_name)}</td>"),
        ("setting", "budget options and what else differs between the method's runs (hover: every option)",
         lambda r: f'<td title="{_e(json.dumps(r.options, sort_keys=True))}">'
                   f'{_e(r.setting(setting_keys.get(r.method)))}</td>'),
        ("bits/weight", "true storage per compressed weight: scales, zeros, masks, indices included",
         lambda r: _num_cell(r.bits_per_weight)),
        ("size MB", "stored weights of the whole model (10^6 bytes)", lambda r: _num_cell(r.size_mb, ".2f")),
        ("sparsity", "fraction of weights removed (structured: of the blocks' parameters)",
         lambda r: _num_cell(r.sparsity)),
        ("quality", "the figure this method changes (hover: which, and the uncompressed value); "
         "perplexity: lower is better, cosine: higher", _quality_cell),
        ("Δ %", "change against the uncompressed model on the same text", _delta_cell),
        ("ppl", "held-out perplexity of the model's weights as compressed",
         lambda r: _num_cell(r.perplexity)),
        ("next-token KL", "KL of next-token distributions against the full cache / full prompt",
         lambda r: _num_cell(_float(r.metrics.get("next_token_kl")), ".4f")),
        ("KV ratio", "KV-cache bytes kept / full", _metric("kv_bytes_ratio")),
        ("retrieval", "encoder: top-10 retrieval agreement with the uncompressed encoder",
         _metric("retrieval_agreement")),
    ]
    for name in task_names:
        cols.append((f"task: {name}", f"evaluation-suite task {name} (higher is better; hover: uncompressed)",
                     lambda r, n=name: _task_cell(r, n)))
    cols += [
        ("time s", "compression wall time on 2 CPU cores (shared machine: noisy)",
         lambda r: _num_cell(r.time_s, ".1f")),
        ("peak MB", "peak process memory while compressing and evaluating", _metric("peak_memory_mb")),
        ("mJ/token", "DRAM energy per generated token (assumption in the run's env)",
         lambda r: _num_cell(_float(r.metrics.get("energy_per_token_j")), ".3f", 1e3)),
        ("more", "further metrics the run reports (hover the cell)", _more_cell),
    ]
    return cols


def _float(value) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def results_table_html(runs: list[Run], known: set[str]) -> str:
    task_names = sorted({t for r in runs for t in r.tasks})
    cols = columns(task_names, known, setting_keys_of(runs))
    head = "".join(f'<th title="{_e(tip)}">{_e(name)}</th>' for name, tip, _ in cols)
    rows = []
    for r in sorted(runs, key=lambda r: (r.family, r.method, r.model, json.dumps(r.options, sort_keys=True))):
        cells = "".join(cell(r) for _, _, cell in cols)
        rows.append(f'<tr data-family="{_e(r.family)}" data-model="{_e(r.model_name)}">{cells}</tr>')
    families = sorted({r.family for r in runs})
    models = sorted({r.model_name for r in runs})
    options = lambda values: "".join(f'<option value="{_e(v)}">{_e(v)}</option>' for v in values)  # noqa: E731
    controls = ('<div class="atlas-results-controls">'
                '<input type="search" class="atlas-filter" placeholder="Filter runs (method, setting, …)" '
                'aria-label="Filter runs">'
                f'<select class="atlas-family" aria-label="Family"><option value="">all families</option>'
                f"{options(families)}</select>"
                f'<select class="atlas-model" aria-label="Model"><option value="">all models</option>'
                f'{options(models)}</select> <span class="atlas-count">{len(runs)} runs</span></div>')
    return (f'<div class="atlas-results">{controls}<div class="atlas-table-scroll">'
            f'<table class="atlas-results-table"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div></div>')


def results_page(runs: list[Run], known: set[str], plots: list[tuple[str, str, str]]) -> str:
    """`plots`: (title, caption, inline SVG) made by catalog.site_plots."""
    lines = [front_matter("Results", hide=["navigation", "toc"]), "# Results", "",
             f"Every measured run of the reference implementations ({len(runs)} runs in `results/*.json`, "
             "written by `atlas bench`). Click a column header to sort, type to filter; hover a header for "
             "what it measures. **bits/weight** is true storage (scales, zero points, masks and indices "
             "included); **quality** is the figure the method changes: held-out perplexity for weight "
             "compression, perplexity of generation through the cache for KV-cache methods, perplexity "
             "after the compressed prompt for prompt compression, embedding cosine for the encoder; "
             "**Δ %** compares it with the uncompressed model on the same text.", ""]
    if not runs:
        lines += ["No results yet: `atlas bench` writes them to `results/`.", ""]
        return "\n".join(lines)
    lines += [results_table_html(runs, known), ""]
    if plots:
        lines += ["## Pareto plots", "",
                  "Drawn at build time from the same files (matplotlib, SVG). The line joins the runs no "
                  "other run beats on both axes; hover a point for its run, click it for the paper.", ""]
        for title, caption, svg in plots:
            lines += [f"### {_e(title)}", "", f'<div class="atlas-plot">{svg}</div>', "", _e(caption), ""]
    return "\n".join(lines)


# -- paper pages: the method beside its family at the same budget ---------------------------------

def _budget_text(budget: tuple) -> str:
    return ", ".join(f"{k}={v}" for k, v in budget)


def family_comparison(method: str, runs: list[Run], known: set[str]) -> list[str]:
    """Markdown: each budget this method was measured at, with every other method of its family measured
    at the same budget on the same model (GPTQ 4-bit g128 beside RTN and AWQ 4-bit g128)."""
    from catalog.results import same_budget

    groups: dict[tuple, list[Run]] = {}
    for r in (r for r in runs if r.method == method):
        peers = same_budget(r, runs)
        if peers:
            members = groups.setdefault((r.model_name, r.budget()), [])
            members.extend(x for x in [r, *peers] if x not in members)
    if not groups:
        return []
    lines = ["### Beside its family at the same budget", "",
             "Every other method of the family measured on the same model at the same budget, best first "
             "(Δ: against the uncompressed model on the same text).", ""]
    for model in sorted({m for m, _ in groups}):
        of_model = {b: members for (m, b), members in groups.items() if m == model}
        label = next(iter(of_model.values()))[0].quality[0]
        lines += [f"**{_md(model)}** — quality: {_md(label)}", "",
                  "| budget | method | quality | Δ % | bits/weight | time (s) |", "|---" * 6 + "|"]
        for budget in sorted(of_model, key=str):
            for r in sorted(of_model[budget], key=lambda r: (r.method != method, _rank(r))):
                lines.append(_comparison_row(r, of_model[budget], method, budget, known))
        lines.append("")
    return lines


def _md(text) -> str:
    from catalog.site_text import md

    return md(text)


def _comparison_row(r: Run, members: list[Run], method: str, budget: tuple, known: set[str]) -> str:
    # a method measured twice at one budget (e.g. with and without decode-time eviction) names what differs
    same = [x.options for x in members if x.method == r.method]
    varying = sorted(k for k in {k for o in same for k in o} if len({repr(o.get(k)) for o in same}) > 1)
    variant = f"({r.setting(varying)})" if varying and r.setting(varying) else ""
    paper = next((p for p in r.papers if p in known), None)
    name = f"[{_md(r.method)}]({paper}.md)" if paper and r.method != method else _md(r.method)
    name = (f"**{name}**" if r.method == method else name) + (" " + _md(variant) if variant else "")
    _, value, ref = r.quality
    delta = "" if value is None or not ref else f"{100 * (value - ref) / ref:+.1f}"
    quality = "" if value is None else f"{value:.3f}"
    bpw = "" if r.bits_per_weight is None else f"{r.bits_per_weight:.3f}"
    time_s = "" if r.time_s is None else f"{r.time_s:.1f}"
    return f"| {_md(_budget_text(budget))} | {name} | {quality} | {delta} | {bpw} | {time_s} |"


def _rank(run: Run) -> float:
    """Best first: low perplexity, high cosine or task accuracy."""
    _, value, _ = run.quality
    if value is None:
        return float("inf")
    return -value if run.higher_is_better else value


def results_page_for(data) -> str:
    """The Results page of a catalog.site.SiteData (plots drawn here, at build time)."""
    from catalog.site_plots import make_plots

    known = set(data.by_id)
    plots = data.plots if data.plots is not None else make_plots(data.runs, known) if data.runs else []
    from catalog.site_perf import perf_section

    return "\n".join([results_page(data.runs, known, plots), "", *perf_section()])
