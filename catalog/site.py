"""Site pages generated from validated records: plain functions from records to Markdown.

`generate_pages` returns {relative path: Markdown text}; the mkdocs hook (site/hooks/atlas.py) adds
them to the build, so the page functions never touch mkdocs and are tested directly. `build_site`
runs mkdocs with that hook: the one library call behind `atlas build`.
"""

from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from catalog.coverage import coverage_markdown
from catalog.export import citation_keys, to_bibtex, to_json
from catalog.results import Run
from catalog.schema import Record
from catalog.site_results import family_comparison, results_page_for
from catalog.site_text import button, code_block, front_matter, leaf_slug, md
from catalog.vocabulary import vocabulary

SUMMARY_FIELDS = ("problem", "method", "results", "limitations")
FIDELITY_MEANING = {"exact": "faithful to the paper and its official code",
                    "simplified": "a simplified variant: what differs from the paper is stated below",
                    "family": "the closest method of this family, not this paper's own algorithm"}
MKDOCS_CONFIG = Path("mkdocs.yml")


@dataclass
class SiteData:
    records: list[Record]
    similar: dict[str, list[str]] = field(default_factory=dict)  # id -> similar ids, best first
    impls: dict[str, dict] = field(default_factory=dict)  # module -> {"name", "options", ...}
    results: dict[str, list[dict]] = field(default_factory=dict)  # method name -> result records
    runs: list = field(default_factory=list)  # every run of results/*.json as catalog.results.Run
    evidence: dict = field(default_factory=dict)  # id -> evidence/<id>.yaml as a dict (catalog.evidence)
    plots: list | None = None  # (title, caption, svg) of the Results page; None: drawn when the page is

    def __post_init__(self):
        self.by_id = {r.id: r for r in self.records}


# -- small pieces -------------------------------------------------------------------------------

def paper_link(r: Record, prefix: str = "../papers/") -> str:
    return f"[{md(r.title)}]({prefix}{r.id}.md)"


def paper_item(r: Record, prefix: str = "../papers/") -> str:
    venue = f" · {md(r.venue)}" if r.venue else ""
    impl = " · :octicons-code-16: runnable" if r.runnable else ""
    return f"- {paper_link(r, prefix)} <small>({r.year}{venue}{impl})</small>"


def badges(r: Record) -> str:
    parts = [f'<span class="atlas-badge atlas-venue">{md(r.venue or "preprint")}</span>',
             f'<span class="atlas-badge atlas-year">{r.year}</span>']
    if r.runnable:
        parts.append(f'<span class="atlas-badge atlas-impl">implementation: {md(r.impl.fidelity)}</span>')
    return " ".join(parts)


def newest_first(records: list[Record]) -> list[Record]:
    return sorted(records, key=lambda r: (-r.year, r.title.lower()))


# -- pages ----------------------------------------------------------------------------------------

def paper_page(r: Record, data: SiteData, bibtex: str) -> str:
    vocab = vocabulary()
    lines = [front_matter(r.title, tags=list(r.tags)), f"# {md(r.title)}", "", badges(r), "",
             f"**Authors:** {md(', '.join(r.authors))}", ""]
    links = []
    if r.arxiv:
        links.append(button(f"arXiv {r.arxiv}", r.arxiv_url))
    if str(r.url) != (r.arxiv_url or ""):
        links.append(button("Paper", str(r.url)))
    if r.code:
        links.append(button("Official code", str(r.code)))
    lines += [" ".join(links), ""]
    for name in SUMMARY_FIELDS:
        lines += [f"## {name.capitalize()}", "", md(getattr(r.summary, name)), ""]
    themes = " · ".join(f"[{md(t)}](../themes/{t}.md)" for t in r.themes)
    lines += ["## Classification", "", f"**Themes:** {themes}  ",
              f"**Taxonomy:** [{md(r.taxonomy)}](../taxonomy/{leaf_slug(r.taxonomy)}.md) "
              f"<small>({md(vocab.taxonomy[r.taxonomy])})</small>  ",
              f"**Tags:** {', '.join(md(t) for t in r.tags)}", ""]
    lines += implementation_section(r, data)
    related = [data.by_id[i] for i in r.related if i in data.by_id]
    if related:
        lines += ["## Related papers", "", *[paper_item(x, "") for x in related], ""]
    similar = [data.by_id[i] for i in data.similar.get(r.id, []) if i in data.by_id and i not in r.related]
    if similar:
        lines += ["## Similar papers", "", "<small>Nearest neighbours by the atlas search engine.</small>",
                  "", *[paper_item(x, "") for x in similar], ""]
    lines += sources_section(r, data.evidence.get(r.id))
    lines += ["## Cite", "", *code_block(bibtex.strip(), "bibtex"), ""]
    return "\n".join(lines)


def sources_section(r: Record, evidence: dict | None) -> list[str]:
    """The URLs the record's facts were checked against, and the quoted sentence behind each claim."""
    if not r.sources:
        return []
    lines = ["## Sources", "", "<small>What this record's facts were checked against.</small>", ""]
    lines += [f"- <{u}>" for u in r.sources]
    claims = [c for check in (evidence or {}).get("checks", []) for c in check.get("claims", [])]
    if claims:
        n = f"{len(claims)} claim" + ("s" if len(claims) != 1 else "")
        lines += ["", f'??? quote "Supporting sentences ({n})"', ""]
        for c in claims:
            lines += [f"    - **{md(c['claim'])}** — “{md(c['quote'])}” ({md(c['source'])})"]
    return lines + [""]


def implementation_section(r: Record, data: SiteData) -> list[str]:
    if r.impl is not None and r.impl.covers:
        names = ", ".join(f"`{n}`" for n in r.impl.covers)  # code spans show text literally: no md()
        note = f" {md(r.impl.note)}" if r.impl.note else ""
        return ["## Reference implementations of what it covers", "",
                f"Runnable methods: {names} ([Implementations](../implementations.md), "
                f"[Results](../results.md)).{note}", ""]
    if r.impl is not None and r.impl.none:
        return ["## Reference implementation", "", f"None: {md(r.impl.none)}", ""]
    if not r.runnable:
        return []
    info = data.impls.get(r.impl.module, {})
    name = r.impl.method or info.get("name", r.impl.module.rsplit(".", 1)[-1])
    fidelity = FIDELITY_MEANING[r.impl.fidelity]
    lines = ["## Reference implementation", "",
             f"Module `{r.impl.module}` — fidelity **{r.impl.fidelity}** ({fidelity}).", ""]
    if r.impl.note:
        lines += [f"**How this paper differs:** {md(r.impl.note)}", ""]
    lines += ["```bash", f"atlas run {name} --model causal --json", "```", ""]
    if info.get("doc"):
        # The module docstring is where each implementation states what it does and leaves out.
        opened = "!!!" if r.impl.fidelity != "exact" else "???"
        lines += [f'{opened} note "What the implementation covers (from its docstring)"', ""]
        for para in info["doc"].split("\n\n"):
            lines += ["    " + md(" ".join(para.split())), ""]
    rows = data.results.get(name, [])
    if rows:
        lines += results_table(rows)
        lines += family_comparison(name, data.runs, set(data.by_id))
    else:
        lines += ["No measured results yet (`atlas bench` writes them to `results/`).", ""]
    return lines


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _model_then_options(row: dict) -> tuple[str, str]:
    return str(row.get("model")), json.dumps(row.get("options", {}), sort_keys=True)


def results_table(rows: list[dict]) -> list[str]:
    """Measured runs: the options that vary between runs (one "setting" cell, so the table fits the
    page), the headline metric, the uncompressed reference, true bits/weight and compression time."""
    keys = sorted({k for row in rows for k in row.get("options", {})})
    varying = [k for k in keys if len({json.dumps(row.get("options", {}).get(k)) for row in rows}) > 1]
    fixed = [k for k in keys if k not in varying]
    header = ["model", "setting", "metric", "full precision", "bits/weight", "time (s)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in sorted(rows, key=_model_then_options):
        m = row.get("metrics", {})
        label, value, reference = Run(method="", family="", model="", options={}, metrics=m).quality
        if value is not None and label.startswith(("perplexity", "held-out")):
            # three decimals: the gaps between methods on the small model are fractions of a point;
            # a KV-cache or prompt method reports the perplexity it changes, not that of the weights
            metric = f"{label} {value:.3f}"
            ref = f"{reference:.3f}" if reference is not None else ""
        elif "cosine" in m:
            metric = f"cosine {m['cosine']:.3f}, top-10 {_fmt(m.get('retrieval_agreement', ''))}"
            ref = "1"
        elif value is not None:  # e.g. black-box distillation: the student's task accuracy vs the teacher's
            base = m.get("task_accuracy_baseline")
            metric = f"{label} {value:.3f}" + (f" (baseline {base:.3f})" if isinstance(base, float) else "")
            ref = f"{reference:.3f}" if reference is not None else ""
        else:
            metric, ref = "", ""
        if "sparsity" in m:
            metric += f", sparsity {m['sparsity']:.3f}"
        options = row.get("options", {})
        # the actual value of every option that differs between rows (the fixed ones are under the table)
        setting = ", ".join(f"{k}={_fmt(options.get(k, ''))}" for k in varying or fixed)
        bpw = row.get("bits_per_weight")
        model = str(row.get("model", "")).rsplit("/", 1)[-1]
        cells = [md(model), md(setting), md(metric), md(ref), "" if bpw is None else f"{bpw:.3f}",
                 f"{float(row.get('time_s', 0)):.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    if varying and fixed:
        shared = ", ".join(f"{k}={_fmt(rows[0].get('options', {}).get(k))}" for k in fixed)
        lines += ["", md(f"Every row: {shared}.")]
    return lines + [""]


def theme_page(theme: str, data: SiteData) -> str:
    vocab = vocabulary()
    members = [r for r in data.records if theme in r.themes]
    title = theme.replace("-", " ").capitalize()
    lines = [front_matter(title), f"# {md(title)}", "",
             md(vocab.themes[theme]), "", f"**{len(members)} papers.**", "", "## Taxonomy", ""]
    leaves = vocab.taxonomy_tree().get(theme, [])
    for leaf in leaves:
        n = sum(r.taxonomy == leaf for r in data.records)
        lines.append(f"- [{md(leaf)}](../taxonomy/{leaf_slug(leaf)}.md) — {md(vocab.taxonomy[leaf])} ({n})")
    lines.append("")
    groups: dict[str, list[Record]] = defaultdict(list)
    for r in members:
        groups[r.taxonomy].append(r)
    for leaf in leaves + sorted(k for k in groups if k not in leaves):
        if leaf in groups:
            heading = md(leaf) if leaf in leaves else f"Also in this theme: {md(leaf)}"
            lines += [f"## {heading}", ""]
            for year in sorted({r.year for r in groups[leaf]}, reverse=True):
                of_year = [paper_item(r) for r in newest_first(groups[leaf]) if r.year == year]
                lines += [f"**{year}**", "", *of_year, ""]
    return "\n".join(lines)


def leaf_page(leaf: str, data: SiteData) -> str:
    vocab = vocabulary()
    members = newest_first([r for r in data.records if r.taxonomy == leaf])
    root = leaf.split("/", 1)[0]
    lines = [front_matter(leaf), f"# {md(leaf)}", "", md(vocab.taxonomy[leaf]), "",
             f"Part of the theme [{md(root)}](../themes/{root}.md). {len(members)} papers.", ""]
    for year in sorted({r.year for r in members}, reverse=True):
        lines += [f"## {year}", "", *[paper_item(r) for r in members if r.year == year], ""]
    return "\n".join(lines)


def taxonomy_page(data: SiteData) -> str:
    vocab = vocabulary()
    lines = [front_matter("Taxonomy"), "# Taxonomy", "",
             "Every paper sits on one leaf of this tree (after the survey arXiv:2308.07633, extended).", ""]
    for root, leaves in vocab.taxonomy_tree().items():
        lines += [f"## [{md(root)}](themes/{root}.md)", ""]
        for leaf in leaves:
            n = sum(r.taxonomy == leaf for r in data.records)
            lines.append(f"- [{md(leaf)}](taxonomy/{leaf_slug(leaf)}.md) ({n}) — {md(vocab.taxonomy[leaf])}")
        lines.append("")
    return "\n".join(lines)


def years_page(data: SiteData) -> str:
    lines = [front_matter("Timeline"), "# Timeline", "",
             "Papers by the year of their first public version.", ""]
    for year in sorted({r.year for r in data.records}, reverse=True):
        members = sorted((r for r in data.records if r.year == year), key=lambda r: r.title.lower())
        lines += [f"## {year} ({len(members)})", "", *[paper_item(r, "papers/") for r in members], ""]
    return "\n".join(lines)


def venue_name(venue: str | None) -> str:
    if not venue:
        return "Preprints"
    # 'NeurIPS 2023 (ENLSP)' and 'ICML 2024 (Workshop)' group as 'NeurIPS workshops', 'ICML workshops'
    base = re.sub(r"\s*\(.*\)\s*$", "", venue)
    words = [w for w in base.split() if not (w.isdigit() and len(w) == 4)]
    name = " ".join(words) or base
    return f"{name} workshops" if base != venue else name


def venues_page(data: SiteData) -> str:
    groups: dict[str, list[Record]] = defaultdict(list)
    for r in data.records:
        groups[venue_name(r.venue)].append(r)
    order = sorted(groups, key=lambda v: (v == "Preprints", -len(groups[v]), v))
    counts = " · ".join(f"{md(v)} ({len(groups[v])})" for v in order)
    lines = [front_matter("Venues"), "# Venues", "", counts, ""]
    for venue in order:
        lines += [f"## {md(venue)}", ""]
        lines += [paper_item(r, "papers/") for r in newest_first(groups[venue])]
        lines.append("")
    return "\n".join(lines)


def tags_page() -> str:
    return "\n".join([front_matter("Tags"), "# Tags", "", "Every tag and the papers that carry it.", "",
                      "<!-- material/tags -->", ""])


def implementations_page(data: SiteData) -> str:
    lines = [front_matter("Implementations"), "# Reference implementations", "",
             "Each method is one readable file under `reference_impls/`, run on the project's own small "
             "causal LM and on the all-MiniLM-L6-v2 sentence encoder. Fidelity says how close it is to "
             "the paper: **exact**, **simplified** (documented differences) or **family** (the closest "
             "method of the family).", ""]
    by_module: dict[str, list[Record]] = defaultdict(list)
    for r in data.records:
        if r.runnable:
            by_module[r.impl.module].append(r)
    if not by_module:
        lines.append("No implementation is linked from the catalog yet.")
    for module in sorted(by_module):
        info = data.impls.get(module, {})
        name = info.get("name", module.rsplit(".", 1)[-1])
        own = [r for r in by_module[module] if r.impl.fidelity != "family"]
        family = [r for r in by_module[module] if r.impl.fidelity == "family"]
        papers = ", ".join(paper_link(r, "papers/") for r in own) or "none of its own"
        lines += [f"## {md(name)}", "", f"`{module}` · papers: " + papers, ""]
        if family:
            # papers whose own method is not implemented run this one (their pages say how they differ)
            lines += [f"Closest implementation for {len(family)} more: "
                      + ", ".join(paper_link(r, "papers/") for r in family), ""]
        lines += ["```bash", f"atlas run {name} --model causal", "```", ""]
        rows = data.results.get(name, [])
        lines += results_table(rows) if rows else ["No measured results yet.", ""]
    return "\n".join(lines)


def home_page(data: SiteData) -> str:
    vocab = vocabulary()
    n_impl = sum(1 for r in data.records if r.impl is not None and r.impl.kind == "own")
    n_linked = sum(1 for r in data.records if r.runnable)
    n_code = sum(1 for r in data.records if r.code)
    lines = [front_matter("LLM Compression Atlas"), "# LLM Compression Atlas", "",
             "A curated, searchable map of the research on compressing large language models — quantization, "
             "pruning, distillation, low-rank factorization, KV-cache and prompt compression, efficient "
             "finetuning and benchmarks — with an original one-minute summary of every paper and small, "
             "tested reference implementations whose results are measured on real models.", "",
             f'<div class="atlas-counts"><span><b>{len(data.records)}</b> papers</span>'
             f"<span><b>{len(vocab.themes)}</b> themes</span>"
             f"<span><b>{len(vocab.taxonomy)}</b> taxonomy leaves</span>"
             f"<span><b>{n_code}</b> with official code</span>"
             f"<span><b>{n_impl}</b> with their own reference implementation</span>"
             f"<span><b>{n_linked}</b> linked to running code</span></div>",
             "", *coverage_markdown(data.records), "## Themes", "", '<div class="grid cards" markdown>', ""]
    for theme, description in vocab.themes.items():
        n = sum(theme in r.themes for r in data.records)
        lines += [f"-   **[{md(theme.replace('-', ' ').capitalize())}](themes/{theme}.md)** · {n} papers", "",
                  "    ---", "", f"    {md(description)}", ""]
    lines += ["</div>", "", "## Newest additions", ""]
    newest = sorted(data.records, key=lambda r: (r.added.isoformat() if r.added else "", r.year, r.id),
                    reverse=True)[:10]
    lines += [paper_item(r, "papers/") for r in newest]
    lines += ["", "## How to search", "",
              "- Press `/` or click the search box to search every page offline (titles, summaries, tags).",
              "- Browse by [theme](themes/quantization.md), [taxonomy](taxonomy.md), [year](years.md), "
              "[venue](venues.md) or [tag](tags.md); runnable methods are on "
              "[Implementations](implementations.md).",
              '- From a terminal: `atlas search "prune without retraining using activations"` ranks papers '
              "by meaning and keywords; `atlas similar gptq` finds neighbours.", "",
              "Downloads: [atlas.bib](atlas.bib) (BibTeX) · [atlas.json](atlas.json) (all records).", ""]
    return "\n".join(lines)


def generate_pages(data: SiteData) -> dict[str, str]:
    """Every generated file of the site, by path relative to the docs dir."""
    vocab = vocabulary()
    bib_all = to_bibtex(data.records)
    keys = citation_keys(data.records)
    pages = {"index.md": home_page(data), "taxonomy.md": taxonomy_page(data), "years.md": years_page(data),
             "venues.md": venues_page(data), "tags.md": tags_page(),
             "implementations.md": implementations_page(data), "results.md": results_page_for(data),
             "atlas.bib": bib_all,
             "atlas.json": json.dumps(to_json(data.records), indent=1, ensure_ascii=False)}
    for r in data.records:
        pages[f"papers/{r.id}.md"] = paper_page(r, data, to_bibtex([r], keys))
    for theme in vocab.themes:
        pages[f"themes/{theme}.md"] = theme_page(theme, data)
    for leaf in vocab.taxonomy:
        pages[f"taxonomy/{leaf_slug(leaf)}.md"] = leaf_page(leaf, data)
    return pages


def build_site(papers: Path, site_dir: Path, *, config: Path = MKDOCS_CONFIG, strict: bool = True,
               force: bool = False) -> None:
    """Run mkdocs (with the atlas hook) on the catalog in `papers`; CatalogInvalid lists its errors.

    The site is built in a temporary directory and swapped in when complete (catalog.site_dir);
    SiteDirError when `site_dir` holds files that are not a site, unless `force`.
    """
    from catalog.site_dir import check_target, staged

    os.environ.setdefault("NO_MKDOCS_2_WARNING", "1")
    os.environ.setdefault("DISABLE_MKDOCS_2_WARNING", "1")
    os.environ["ATLAS_PAPERS"] = str(papers.resolve())
    from mkdocs.commands.build import build
    from mkdocs.config import load_config

    check_target(site_dir, force=force)
    with staged(site_dir) as tmp:
        build(load_config(config_file=str(config), site_dir=str(tmp), strict=strict))
