"""Catalog commands: validate, list, show, export, stats, bench (add and enrich: add_enrich_cmds)."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from catalog.cli_app import PapersOption, app, papers_dir
from catalog.coverage import coverage
from catalog.load import CatalogInvalid, load_catalog, load_records
from catalog.schema import Record
from catalog.vocabulary import suggest, vocabulary

# Data (titles, ids, queries, paths) is printed as it is: no rich markup, emoji codes or highlighting is
# read from it ("[/s]" in a title would crash a markup console, "[mask]" would vanish). Styling is
# explicit: rich Text objects, or markup=True on a format string that holds no data.
out = Console(soft_wrap=True, markup=False, emoji=False, highlight=False)
err = Console(stderr=True, soft_wrap=True, markup=False, emoji=False, highlight=False)


def fail(message: str, code: int = 1) -> typer.Exit:
    err.print(Text.assemble(("error:", "red"), " ", message))
    return typer.Exit(code)


def invalid_exit(exc: CatalogInvalid) -> typer.Exit:
    """Print every catalog error on stderr, one FILE:LINE: FIELD: MESSAGE line each; the exit to raise."""
    for e in exc.errors:
        err.print(str(e), markup=False, highlight=False)
    return typer.Exit(1)


def records_or_exit(papers: Path | None) -> list[Record]:
    """Validated records, or every error on stderr and exit 1 (nothing on stdout)."""
    try:
        return load_records(papers_dir(papers))
    except CatalogInvalid as exc:
        raise invalid_exit(exc) from None


def check_theme(theme: str | None) -> None:
    if theme is not None and theme not in vocabulary().themes:
        raise fail(f"--theme: unknown theme '{theme}'{suggest(theme, vocabulary().themes)}")


def print_json(data) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


@app.command()
def validate(
    papers: Path | None = PapersOption,
    coverage: bool = typer.Option(True, help="Also require every taxonomy leaf to have a paper."),
) -> None:
    """Check every record: schema, vocabulary, uniqueness, links, summary length.

    Prints one line per error as FILE:LINE: FIELD: MESSAGE and exits 1 if there is any.

    Example: atlas validate --papers papers
    """
    try:
        catalog = load_catalog(papers_dir(papers), coverage=coverage)
    except CatalogInvalid as exc:
        raise invalid_exit(exc) from None
    for e in catalog.errors:
        err.print(str(e), markup=False, highlight=False)
    if catalog.errors:
        err.print(f"{len(catalog.errors)} error(s) in {papers_dir(papers)}", highlight=False)
        raise typer.Exit(1)
    _warn_missing_impl(catalog.records)
    err.print(f"[green]ok[/green]: {len(catalog.records)} records valid", markup=True)


def _warn_missing_impl(records: list[Record]) -> None:
    """While catalog.validate.REQUIRE_IMPL is off, records of a method theme without impl are counted."""
    from catalog.validate import METHOD_THEMES, REQUIRE_IMPL, missing_impl

    missing = missing_impl(records)
    if REQUIRE_IMPL or not missing:
        return
    per_theme = Counter(t for r in missing for t in r.themes if t in METHOD_THEMES)
    detail = ", ".join(f"{t} {n}" for t, n in per_theme.most_common())
    err.print(f"[yellow]warning[/yellow]: {len(missing)} record(s) of a method theme have no impl "
              f"({detail}); see atlas stats", markup=True)


def _filter(records: list[Record], theme: str | None, year: int | None) -> list[Record]:
    return [r for r in records if (theme is None or theme in r.themes) and (year is None or r.year == year)]


@app.command("list")
def list_(
    theme: str | None = typer.Option(None, help="Only records with this theme."),
    year: int | None = typer.Option(None, help="Only records first published this year."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list instead of a table."),
    papers: Path | None = PapersOption,
) -> None:
    """List records (newest first).

    Example: atlas list --theme pruning --year 2024
    """
    check_theme(theme)
    records = sorted(_filter(records_or_exit(papers), theme, year), key=lambda r: (-r.year, r.id))
    if as_json:
        print_json([{"id": r.id, "title": r.title, "year": r.year, "venue": r.venue, "themes": r.themes,
                     "taxonomy": r.taxonomy, "arxiv": r.arxiv, "url": str(r.url)} for r in records])
        return
    table = Table(title=f"{len(records)} papers", show_lines=False)
    for col in ("id", "year", "venue", "themes", "title"):
        table.add_column(col, overflow="fold")
    for r in records:
        table.add_row(r.id, str(r.year), r.venue or "preprint", ", ".join(r.themes), r.title)
    out.print(table)


@app.command()
def show(
    record_id: str = typer.Argument(..., metavar="ID", help="Record id, e.g. gptq."),
    as_json: bool = typer.Option(False, "--json", help="Print the record as JSON."),
    papers: Path | None = PapersOption,
) -> None:
    """Show one record.

    Example: atlas show gptq
    """
    records = {r.id: r for r in records_or_exit(papers)}
    if record_id not in records:
        raise fail(f"no record '{record_id}'{suggest(record_id, records)}")
    r = records[record_id]
    if as_json:
        print_json(r.model_dump(mode="json"))
        return
    out.print(Text(r.title, style="bold"))
    out.print(", ".join(r.authors), highlight=False)
    out.print(f"{r.venue or 'preprint'} · {r.year} · arXiv {r.arxiv or '—'}", highlight=False)
    out.print(f"url: {r.url}" + (f"   code: {r.code}" if r.code else ""), highlight=False)
    out.print(f"themes: {', '.join(r.themes)}   taxonomy: {r.taxonomy}", highlight=False)
    out.print(f"tags: {', '.join(r.tags)}", highlight=False)
    for name in ("problem", "method", "results", "limitations"):
        out.print(Text.assemble("\n", (name.capitalize(), "bold"), "\n", getattr(r.summary, name)))
    _show_impl(out, r)
    if r.related:
        out.print(f"\nrelated: {', '.join(r.related)}", highlight=False)
    if r.sources:
        out.print(f"sources: {', '.join(str(u) for u in r.sources)}", highlight=False)


def _show_impl(out, r) -> None:
    """The record's link to code: its module (fidelity, how it differs), what it covers, or why none."""
    if r.impl is None:
        return
    if r.runnable:
        method = f", method {r.impl.method}" if r.impl.method else ""
        line = f": {r.impl.module} ({r.impl.fidelity}{method})"
        out.print(Text.assemble("\n", ("Implementation", "bold"), line))
        if r.impl.note:
            out.print(Text(f"how this paper differs: {r.impl.note}"))
    elif r.impl.covers:
        covered = ", ".join(r.impl.covers)
        out.print(Text.assemble("\n", ("Implementations of what it covers", "bold"), f": {covered}"))
    elif r.impl.none:
        out.print(Text.assemble("\n", ("Implementation", "bold"), f": none ({r.impl.none})"))


@app.command()
def export(
    fmt: str = typer.Option(..., "--format", "-f", help="bibtex, csljson or json."),
    theme: str | None = typer.Option(None, help="Only records with this theme."),
    output: Path | None = typer.Option(None, "--output", "-o",
                                       help="Write to this file (atomically) instead of stdout."),
    papers: Path | None = PapersOption,
) -> None:
    """Export the catalog as BibTeX, CSL-JSON (Zotero) or JSON.

    Example: atlas export --format bibtex --theme quantization > quantization.bib
    """
    from catalog.export import export as render

    if fmt not in ("bibtex", "csljson", "json"):
        hint = suggest(fmt, ["bibtex", "csljson", "json"])
        raise fail(f"--format: unknown format '{fmt}'{hint} (choose bibtex, csljson or json)")
    check_theme(theme)
    from catalog.files import OutputError, check_output_file, write_text_atomic

    try:
        if output is not None:  # a bad destination fails before any work
            check_output_file(output)
        text = render(_filter(records_or_exit(papers), theme, None), fmt)
        if output is None:
            sys.stdout.write(text)
            return
        write_text_atomic(output, text)
    except OutputError as exc:
        raise fail(str(exc), exc.code) from None
    err.print(f"wrote {output}")


@app.command()
def stats(
    as_json: bool = typer.Option(False, "--json", help="Print the counts as JSON."),
    papers: Path | None = PapersOption,
) -> None:
    """Counts per theme, taxonomy leaf, year and venue; papers without code.

    Example: atlas stats
    """
    records = records_or_exit(papers)
    vocab = vocabulary()
    venues = Counter((r.venue or "preprint").rsplit(" ", 1)[0] if r.venue else "preprint" for r in records)
    counts = {
        "records": len(records),
        "themes": {t: sum(t in r.themes for r in records) for t in vocab.themes},
        "taxonomy": {leaf: sum(r.taxonomy == leaf for r in records) for leaf in vocab.taxonomy},
        "years": dict(sorted(Counter(r.year for r in records).items())),
        "venues": dict(venues.most_common()),
        "without_code": sorted(r.id for r in records if r.code is None),
        "with_impl": sorted(r.id for r in records if r.runnable),
        "impl_coverage": coverage(records),
    }
    if as_json:
        print_json(counts)
        return
    out.print(f"[bold]{counts['records']} records[/bold], {len(counts['without_code'])} without code, "
              f"{len(counts['with_impl'])} with a reference implementation", markup=True)
    out.print(coverage_table(counts["impl_coverage"]))
    for title, data in (("theme", counts["themes"]), ("taxonomy leaf", counts["taxonomy"]),
                        ("year", counts["years"]), ("venue", counts["venues"])):
        table = Table(title=f"per {title}")
        table.add_column(title)
        table.add_column("papers", justify="right")
        for key, n in data.items():
            table.add_row(str(key), str(n), style="red" if n == 0 else None)
        out.print(table)


def coverage_table(rows: dict[str, dict[str, int]]) -> Table:
    """Running code per theme: own method, family method, covered methods, a reason for none, missing."""
    from catalog.coverage import CLASSES, is_method_theme, linked_share

    table = Table(title="running code per theme (own = the paper's method, family = its family's closest)")
    table.add_column("theme")
    table.add_column("papers", justify="right")
    for c in CLASSES:
        table.add_column(c, justify="right")
    table.add_column("linked", justify="right")
    for theme, row in rows.items():
        gap = row["missing"] and (theme == "all" or is_method_theme(theme))
        table.add_row(theme, str(row["records"]), *(str(row[c]) for c in CLASSES),
                      f"{linked_share(row):.0%}", style="red" if gap else None)
    return table


BENCHES = {
    "compositions": "reference_impls.common.grids:bench_compositions",
    "task-agreement": "reference_impls.common.grids:bench_task_agreement",
    "search": "catalog.search_bench:run_bench",
    "site": "catalog.site_bench:run_bench",
    "perf": "reference_impls.common.perf_bench:run_bench",
}


@app.command()
def bench(
    targets: list[str] = typer.Argument(None, help="search, site, or method names (default: everything)."),
    model: list[str] = typer.Option(None, "--model",
                                    help="Re-run methods on this model only (causal, encoder); "
                                    "runs on other models are kept from results/. Repeatable."),
    missing: bool = typer.Option(False, "--missing",
                                 help="Only run grid points that results/ does not hold yet."),
    quick: bool = typer.Option(False, "--quick",
                               help="A tiny grid for CI (methods, a composition, tasks); writes nothing "
                               "under results/."),
    papers: Path | None = PapersOption,
) -> None:
    """Run benchmarks and write results/*.json.

    Example: atlas bench search      (search quality and latency)
             atlas bench site        (site build times: the catalog and 2,000 synthetic records)
             atlas bench gptq rtn    (reference implementations)
             atlas bench impls --model causal   (after retraining the causal LM)
             atlas bench compositions   (a+b combinations → results/compositions.json)
             atlas bench task-agreement (perplexity vs the task suite → results/task_agreement.json)
             atlas bench --quick        (CI: a tiny grid, every figure checked finite)
             atlas bench perf           (timings against the official loops → results/perf.json)
    """
    import importlib

    if quick:
        from reference_impls.common.grids import bench_quick

        bench_quick(papers_dir(papers))
        return

    targets = targets or ["search", "site", "impls"]
    methods = [t for t in targets if t not in BENCHES and t != "impls"]
    bad_models = [m for m in model or [] if m not in ("causal", "encoder")]
    if bad_models:
        raise fail(f"--model {bad_models[0]}: choose causal or encoder")
    if methods:
        from reference_impls.common import registry

        names = [m.name for m in registry.all_methods()]
        unknown = [m for m in methods if m not in names]
        if unknown:
            hint = suggest(unknown[0], [*BENCHES, "impls", *names])
            raise fail(f"unknown bench target '{unknown[0]}'{hint}")
    for target in targets:
        if target in BENCHES:
            module, func = BENCHES[target].split(":")
            getattr(importlib.import_module(module), func)(papers_dir(papers))
    if "impls" in targets or methods:
        from reference_impls.common.bench import run_bench

        try:
            run_bench(methods, models=tuple(model) if model else None, missing_only=missing,
                      papers_dir=papers_dir(papers))
        except CatalogInvalid as exc:  # the encoder is evaluated on the catalog's records
            raise invalid_exit(exc) from None
