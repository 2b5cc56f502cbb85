"""Pareto plots of the measured runs, drawn at site build time as inline SVG (matplotlib).

Why matplotlib SVG rather than Vega-Lite: the plots are made once per build from committed files, so a
static image is all a reader needs; SVG keeps every point a real link (matplotlib's `url=`) with a
native hover tooltip (`<title>`, added below), works offline, in print and without JavaScript, and
adds no vendored JS bundle to keep up to date. What it gives up is zoom; the sortable table above
the plots is where to read exact values.

A plot is a list of `Point`s; the line joins the Pareto front (points no other point beats on both
axes, in the stated directions) and the front's points carry their method name.
"""

from __future__ import annotations

import html
import io
import re
from collections.abc import Callable
from dataclasses import dataclass

from catalog.results import Run

WEIGHT_FAMILIES = ("quantization", "formats", "pruning", "low_rank", "distillation", "encoding", "qat",
                   "finetuning", "combination")


@dataclass
class Point:
    x: float
    y: float
    series: str
    label: str  # the method name written next to front points
    tooltip: str
    url: str | None = None
    marker: str = "o"


def pareto_front(points: list[Point], *, min_x: bool = True, min_y: bool = True) -> list[Point]:
    """Points that no other point beats on both axes, ordered along x.

    x is compared at 3 significant digits: a measured sparsity of 0.6998 and a nominal 0.7 are the same
    budget, so the lower perplexity wins rather than the 0.0002 of extra sparsity.
    """
    def x_key(p: Point) -> float:
        x = float(f"{p.x:.3g}")
        return x if min_x else -x

    ordered = sorted(points, key=lambda p: (x_key(p), p.y if min_y else -p.y))
    front: list[Point] = []
    for p in ordered:
        if not front or (p.y < front[-1].y if min_y else p.y > front[-1].y):
            front.append(p)
    return front


def _svg(fig, slug: str, points: list[Point]) -> str:
    import matplotlib

    matplotlib.rcParams["svg.hashsalt"] = slug  # stable ids, distinct between plots inlined in one page
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    svg = buf.getvalue()
    svg = svg[svg.index("<svg"):]  # drop the XML prolog and doctype: the SVG is inlined in HTML
    for i, p in enumerate(points):
        gid = f'<g id="{slug}-pt{i}">'
        svg = svg.replace(gid, f"{gid}<title>{html.escape(p.tooltip)}</title>", 1)
    # links open the paper page in the page itself (not inside the SVG), relative to /results/
    svg = re.sub(r"<a xlink:href=", '<a target="_top" xlink:href=', svg)
    return svg


def scatter_svg(slug: str, points: list[Point], *, xlabel: str, ylabel: str, min_x: bool = True,
                min_y: bool = True, refs: tuple[tuple[float, str], ...] = (),
                logy: bool | None = None) -> str:
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams.update({"svg.fonttype": "none", "font.size": 9})
    import matplotlib.pyplot as plt

    # a run far worse than the uncompressed model (a broken ablation, a model trained from scratch) would
    # squash every other point into one line: it is left out here, counted on the plot, shown in the table
    clip = 4 * refs[0][0] if refs and min_y and refs[0][0] > 0 else None
    hidden = [p for p in points if clip is not None and p.y > clip]
    points = [p for p in points if p not in hidden]
    fig, ax = plt.subplots(figsize=(7.2, 4.2))
    series = sorted({p.series for p in points})
    colors = plt.get_cmap("tab20" if len(series) > 10 else "tab10")
    color_of = {s: colors(i % colors.N) for i, s in enumerate(series)}
    for i, p in enumerate(points):
        # combinations (diamonds) on top: they sit next to the single methods they combine
        ax.scatter([p.x], [p.y], s=44 if p.marker == "D" else 28, marker=p.marker, color=color_of[p.series],
                   gid=f"{slug}-pt{i}", urls=[p.url] if p.url else None, zorder=4 if p.marker == "D" else 3,
                   edgecolors="black" if p.marker == "D" else "white", linewidths=0.5)
    front = pareto_front(points, min_x=min_x, min_y=min_y)
    ax.plot([p.x for p in front], [p.y for p in front], color="0.35", lw=1, ls="-", zorder=2)
    for y, label in refs:
        ax.axhline(y, color="0.5", lw=0.8, ls="--", zorder=1)
        ax.annotate(label, (1, y), xycoords=("axes fraction", "data"), xytext=(-4, 3),
                    textcoords="offset points", ha="right", fontsize=7, color="0.4")
    ys = [p.y for p in points] + [y for y, _ in refs]
    if logy if logy is not None else (min(ys) > 0 and max(ys) / min(ys) > 3):
        from matplotlib.ticker import LogLocator, ScalarFormatter

        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
        ax.yaxis.set_major_formatter(ScalarFormatter())  # 50, 100, 200 rather than 5×10¹
        ax.yaxis.set_minor_formatter(plt.NullFormatter())
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, color="0.9", zorder=0)
    if hidden:
        ax.annotate(f"{len(hidden)} run(s) above {clip:.0f} not shown (see the table)", (0.01, 0.98),
                    xycoords="axes fraction", va="top", fontsize=7, color="0.4")
    _label_front(ax, front)  # after the axes' scales are final: it measures label gaps in pixels
    handles = [plt.Line2D([], [], ls="", marker="o", color=color_of[s], label=s) for s in series]
    ax.legend(handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    svg = _svg(fig, slug, points)
    plt.close(fig)
    return svg


def _label_front(ax, front: list[Point]) -> None:
    """Name the front's methods, once per method and not on top of the previous label."""
    fig = ax.figure
    fig.canvas.draw()
    last, named = None, set()
    for p in front:
        x, y = ax.transData.transform((p.x, p.y))  # display pixels
        if p.label in named or (last is not None and abs(x - last[0]) < 40 and abs(y - last[1]) < 12):
            continue
        ax.annotate(p.label, (p.x, p.y), xytext=(4, 5), textcoords="offset points", fontsize=7, color="0.2")
        last = (x, y)
        named.add(p.label)


# -- which runs, which axes ------------------------------------------------------------------------

def _url(run: Run, known: set[str]) -> str | None:
    return next((f"../papers/{p}/" for p in run.papers if p in known), None)


def _point(run: Run, x: float, y: float, known: set[str], *, series: str | None = None,
           marker: str = "o") -> Point:
    tip = f"{run.method} · {run.setting() or 'defaults'} · x={x:.4g}, y={y:.4g}"
    return Point(x=x, y=y, series=series or run.method, label=run.method, tooltip=tip, url=_url(run, known),
                 marker=marker)


def _pruning_marker(run: Run) -> str:
    if run.options.get("prune_n"):
        return "s"  # N:M
    return "o" if "sparsity" in run.metrics else "^"  # unstructured / structured


def _fp_ref(runs: list[Run], key: str = "perplexity_fp") -> tuple[tuple[float, str], ...]:
    values = [r.metrics.get(key) for r in runs if isinstance(r.metrics.get(key), float)]
    return ((values[0], "uncompressed"),) if values else ()


def _same_model(runs: list[Run]) -> list[Run]:
    """The runs whose uncompressed reference is the shared causal LM's (the most common perplexity_fp):
    a run on another model (BitNet trained from scratch at its own size) is not on the same axis."""
    refs = [round(r.metrics["perplexity_fp"], 3) for r in runs
            if isinstance(r.metrics.get("perplexity_fp"), float)]
    if not refs:
        return runs
    common = max(set(refs), key=refs.count)
    return [r for r in runs if "perplexity_fp_same_steps" not in r.metrics
            and (not isinstance(r.metrics.get("perplexity_fp"), float)
                 or abs(r.metrics["perplexity_fp"] - common) <= 0.01 * common)]


def _plot_weights(runs, known, *, families, slug, color_by_family=False):
    chosen = _same_model([r for r in runs if r.model == "causal" and r.family in families
                          and r.perplexity is not None and r.bits_per_weight is not None
                          and r.bits_per_weight < 16])
    points = [_point(r, r.bits_per_weight, r.perplexity, known, series=r.family if color_by_family else None,
                     marker=_pruning_marker(r) if r.family == "pruning" else "o") for r in chosen]
    return points, dict(xlabel="true bits per weight (scales, zeros, masks, indices included)",
                        ylabel="held-out perplexity (causal LM)", refs=_fp_ref(chosen))


def _plot_size(runs, known, *, families):
    chosen = _same_model([r for r in runs if r.model == "causal" and r.family in families
                          and r.perplexity is not None and r.size_mb is not None])
    points = [_point(r, r.size_mb, r.perplexity, known) for r in chosen]
    return points, dict(xlabel="stored weights (MB)", ylabel="held-out perplexity (causal LM)",
                        refs=_fp_ref(chosen))


def _plot_sparsity(runs, known, *, slug, families=("pruning", "combination")):
    chosen = [r for r in runs if r.model == "causal" and r.family in families and r.perplexity is not None
              and r.sparsity is not None and r.sparsity > 0]
    points = [_point(r, r.sparsity, r.perplexity, known, marker=_pruning_marker(r)) for r in chosen]
    return points, dict(xlabel="sparsity (● unstructured, ■ N:M, ▲ structured: share of block parameters)",
                        ylabel="held-out perplexity (causal LM)", min_x=False, refs=_fp_ref(chosen))


def _plot_kv(runs, known, *, slug):
    chosen = [r for r in runs if r.family == "kv_cache" and isinstance(r.metrics.get("perplexity_kv"), float)
              and isinstance(r.metrics.get("kv_bytes_ratio"), float)]
    points = [_point(r, r.metrics["kv_bytes_ratio"], r.metrics["perplexity_kv"], known) for r in chosen]
    return points, dict(xlabel="KV-cache bytes kept / full cache", ylabel="perplexity of generation through "
                        "the cache", refs=_fp_ref(chosen, "perplexity_kv_full"), logy=False)


def _plot_prompt(runs, known, *, slug):
    chosen = [r for r in runs if r.family == "prompt"
              and isinstance(r.metrics.get("perplexity_compressed"), float)
              and isinstance(r.metrics.get("kept_fraction"), float)]
    points = [_point(r, r.metrics["kept_fraction"], r.metrics["perplexity_compressed"], known)
              for r in chosen]
    refs = _fp_ref(chosen, "perplexity_full_context")
    no_ctx = [r.metrics.get("perplexity_no_context") for r in chosen if "perplexity_no_context" in r.metrics]
    if no_ctx:
        refs += ((no_ctx[0], "no context"),)
    return points, dict(xlabel="fraction of context tokens kept", ylabel="perplexity of the continuation",
                        refs=refs, logy=False)


def _plot_encoder(runs, known, *, slug):
    chosen = [r for r in runs if r.model_name == "encoder" and r.size_mb is not None
              and isinstance(r.metrics.get("retrieval_agreement"), float)]
    points = [_point(r, r.size_mb, r.metrics["retrieval_agreement"], known, series=r.family) for r in chosen]
    return points, dict(xlabel="stored weights (MB)", min_y=False, logy=False,
                        ylabel="top-10 retrieval agreement\n(catalog papers, vs uncompressed)")


def _plot_task(runs, known, *, slug, task):
    chosen = [r for r in runs if task in r.tasks and r.size_mb is not None]
    points = [_point(r, r.size_mb, r.tasks[task], known, series=r.family) for r in chosen]
    refs = next((((r.tasks_fp[task], "uncompressed"),) for r in chosen if task in r.tasks_fp), ())
    return points, dict(xlabel="stored weights (MB)", ylabel=f"task score: {task}", min_y=False, logy=False,
                        refs=refs)


PlotSpec = tuple[str, str, str, Callable]  # slug, title, caption, builder


def plot_specs(runs: list[Run]) -> list[PlotSpec]:
    specs: list[PlotSpec] = [
        ("pareto-bits", "Bits per weight vs perplexity, all weight compression",
         "Causal LM, every weight-compressing run, coloured by family; dashed: the uncompressed model.",
         lambda rs, k, slug: _plot_weights(rs, k, families=WEIGHT_FAMILIES, slug=slug, color_by_family=True)),
        ("pareto-quant", "Quantization: bits per weight vs perplexity",
         "Causal LM; integer and floating-point formats by method.",
         lambda rs, k, slug: _plot_weights(rs, k, families=("quantization", "formats"), slug=slug)),
        ("pareto-sparsity", "Pruning: sparsity vs perplexity",
         "Causal LM; structured methods at the share of transformer-block parameters they remove.",
         lambda rs, k, slug: _plot_sparsity(rs, k, slug=slug)),
        ("pareto-kv", "KV cache: bytes kept vs perplexity", "Generation through the compressed cache "
         "(eviction and quantization); dashed: the full cache on the same text.",
         lambda rs, k, slug: _plot_kv(rs, k, slug=slug)),
        ("pareto-prompt", "Prompt compression: tokens kept vs perplexity", "Perplexity of the continuation "
         "after the compressed context; dashed: full context and no context.",
         lambda rs, k, slug: _plot_prompt(rs, k, slug=slug)),
        ("pareto-encoder", "Encoder: model bytes vs retrieval", "all-MiniLM-L6-v2 compressed: does it still "
         "retrieve the same catalog papers for held-out queries?",
         lambda rs, k, slug: _plot_encoder(rs, k, slug=slug)),
    ]
    for family, title in (("low_rank", "Low-rank"), ("encoding", "Encoding"), ("qat", "QAT")):
        specs.append((f"pareto-{family}", f"{title}: bits per weight vs perplexity", "Causal LM.",
                      lambda rs, k, slug, f=family: _plot_weights(rs, k, families=(f,), slug=slug)))
    for family, title in (("distillation", "Distillation"), ("finetuning", "Finetuning")):
        specs.append((f"pareto-{family}", f"{title}: model size vs perplexity", "Causal LM: students and "
                      "adapted models at their stored size (16-bit weights count 16 bits).",
                      lambda rs, k, slug, f=family: _plot_size(rs, k, families=(f,))))
    specs.append(("pareto-combination", "Combinations: bits per weight vs perplexity",
                  "Composed methods (results/compositions.json) beside the single methods they combine.",
                  _plot_combinations))
    for task in sorted({t for r in runs for t in r.tasks}):
        slug = "pareto-task-" + re.sub(r"[^a-z0-9]+", "-", task.lower()).strip("-")
        specs.append((slug, f"Model bytes vs task score: {task}", "Higher is better.",
                      lambda rs, k, slug, t=task: _plot_task(rs, k, slug=slug, task=t)))
    return specs


def _plot_combinations(runs, known, slug):
    combos = [r for r in runs if r.family == "combination" and r.model == "causal"]
    if not combos:
        return [], {}
    stages = {s for r in combos for s in r.stages}
    chosen = combos + [r for r in runs if r.method in stages and r.model == "causal"]
    chosen = [r for r in chosen if r.perplexity is not None and r.bits_per_weight is not None
              and r.bits_per_weight < 16]
    points = [_point(r, r.bits_per_weight, r.perplexity, known,
                     series="combination" if r.stages else f"single: {r.method}",
                     marker="D" if r.stages else "o") for r in chosen]
    return points, dict(xlabel="true bits per weight", ylabel="held-out perplexity (causal LM)",
                        refs=_fp_ref(chosen))


def make_plots(runs: list[Run], known: set[str], *, min_points: int = 2) -> list[tuple[str, str, str]]:
    """(title, caption, inline SVG) for every plot with at least `min_points` points."""
    plots = []
    for slug, title, caption, build in plot_specs(runs):
        points, kwargs = build(runs, known, slug)
        if len(points) >= min_points:
            plots.append((title, caption, scatter_svg(slug, points, **kwargs)))
    return plots


def cached_plots(runs: list[Run], known: set[str], cache_dir) -> list[tuple[str, str, str]]:
    """`make_plots`, cached by the content of the runs, the known paper ids and this module's source:
    a rebuild with unchanged results draws nothing (matplotlib is not even imported)."""
    import hashlib
    import json
    from dataclasses import asdict
    from pathlib import Path

    digest = hashlib.sha256(Path(__file__).read_bytes())
    digest.update(json.dumps([asdict(r) for r in runs], sort_keys=True, default=str).encode())
    digest.update(json.dumps(sorted(known)).encode())
    cache = Path(cache_dir) / f"plots-{digest.hexdigest()[:16]}.json"
    if cache.exists():
        try:
            return [tuple(p) for p in json.loads(cache.read_text())]
        except (OSError, ValueError):
            pass  # a damaged cache is redrawn
    plots = make_plots(runs, known)
    cache.parent.mkdir(parents=True, exist_ok=True)
    for old in cache.parent.glob("plots-*.json"):
        old.unlink(missing_ok=True)
    tmp = cache.with_suffix(".tmp")
    tmp.write_text(json.dumps(plots))
    tmp.replace(cache)
    return plots
