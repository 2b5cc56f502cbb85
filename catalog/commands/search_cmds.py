"""Search commands: search, similar, index (DESIGN §3).

Everything heavy (NumPy encoder, faiss, bm25s, sentence-transformers) is imported inside the
commands, so `atlas --help` and the catalog commands do not pay for it.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.table import Table
from rich.text import Text

from catalog.cli_app import PapersOption, app, exit_on_interrupt
from catalog.commands.catalog_cmds import err, fail, out, print_json, records_or_exit

CacheOption = typer.Option(None, "--cache-dir", show_default=False,
                           help="Index cache directory (default: $ATLAS_CACHE or .atlas).")
TopOption = typer.Option(10, "--top", "-k", help="How many results.")
JsonOption = typer.Option(False, "--json", help="Print a JSON list of hits (stdout holds nothing else).")


def cache_dir(option: Path | None) -> Path:
    return option if option is not None else Path(os.environ.get("ATLAS_CACHE", ".atlas"))


def _log(message: str) -> None:
    err.print(message, highlight=False, markup=False)


def _searcher(records, cache: Path, *, required: bool = False):
    """A Searcher on a usable cache; an unusable one degrades to an in-memory index with a warning."""
    from catalog.index import CacheUnusable, ModelMissing, load_or_build
    from catalog.search import Searcher

    searcher = Searcher(records, cache_dir=cache, log=_log)
    try:
        searcher.dense_index()
    except ModelMissing as exc:
        raise fail(str(exc), code=2) from None
    except CacheUnusable as exc:
        if required:
            raise fail(f"{exc} (choose another with --cache-dir or $ATLAS_CACHE)", code=2) from None
        _log(f"warning: {exc}; building the index in memory for this run "
             "(choose another cache with --cache-dir)")
        searcher.dense = load_or_build(records, None, progress=True, log=_log)
    return searcher


def _one_line(text: str, width: int = 110) -> str:
    first = text.split(". ")[0].strip().rstrip(".") + "."
    return first if len(first) <= width else first[: width - 1].rstrip() + "…"


def _show(hits, title: str, as_json: bool) -> None:
    if as_json:
        print_json([h.to_json() for h in hits])
        return
    if not hits:
        err.print("no results", highlight=False)
        return
    table = Table(title=title, show_lines=True)
    for col, kw in (("#", {"justify": "right"}), ("id", {}), ("title", {"ratio": 3}), ("year", {}),
                    ("themes", {}), ("summary", {"ratio": 4}), ("score", {"justify": "right"})):
        table.add_column(col, overflow="fold", **kw)
    for rank, h in enumerate(hits, start=1):
        r = h.record
        table.add_row(str(rank), r.id, r.title, str(r.year), ", ".join(r.themes), _one_line(r.summary.method),
                      f"{h.score:.3f}")
    out.print(table)


@app.command()
def search(
    query: str = typer.Argument(...,
                                help='An idea ("prune without retraining") or keywords ("kv cache 2-bit").'),
    top: int = TopOption,
    theme: list[str] = typer.Option(None, "--theme", help="Only these themes (repeatable; any of them)."),
    taxonomy: str | None = typer.Option(None,
                                        help="Only this taxonomy path or prefix, e.g. quantization/ptq."),
    year_from: int | None = typer.Option(None, "--year-from", help="Only papers from this year on."),
    year_to: int | None = typer.Option(None, "--year-to", help="Only papers up to this year."),
    venue: str | None = typer.Option(None, help="Venue contains this text (e.g. ICLR); 'preprint' for none."),
    has_code: bool | None = typer.Option(None, "--has-code/--no-code",
                                         help="Only papers with (or without) official code."),
    has_impl: bool | None = typer.Option(None, "--has-impl/--no-impl",
                                         help="Only papers with (or without) a reference implementation."),
    mode: str = typer.Option("hybrid",
                             help="hybrid (default, best measured), dense (meaning) or bm25 (keywords)."),
    as_json: bool = JsonOption,
    papers: Path | None = PapersOption,
    cache: Path | None = CacheOption,
) -> None:
    """Search the catalog by idea or keyword; builds or refreshes the index when it is stale.

    Example: atlas search "prune without retraining using activations" --theme pruning --top 5
    """
    from catalog.search import Filters, QueryError, check_top, clean_query

    filters = Filters(themes=tuple(theme or ()), taxonomy=taxonomy, year_from=year_from, year_to=year_to,
                      venue=venue, has_code=has_code, has_impl=has_impl)
    try:  # bad input fails before the catalog or the model is loaded
        query = clean_query(query)
        check_top(top)
        filters.check()
        if mode not in ("hybrid", "dense", "bm25"):
            raise QueryError(f"--mode: unknown mode '{mode}' (choose hybrid, dense or bm25)")
    except QueryError as exc:
        raise fail(str(exc)) from None
    records = records_or_exit(papers)
    if not records:
        _log("note: the catalog has no records")
        _show([], "", as_json)
        return
    with exit_on_interrupt("the search index was not changed (its writes are atomic)"):
        searcher = _searcher(records, cache_dir(cache))
        for note in searcher.notes(query):
            _log(f"note: {note}")
        hits = searcher.search(query, top, mode, filters)
    _show(hits, f"{len(hits)} results for “{query[:80]}” ({mode})", as_json)


@app.command()
def similar(
    record_id: str = typer.Argument(..., metavar="ID", help="Record id, e.g. wanda."),
    top: int = TopOption,
    as_json: bool = JsonOption,
    papers: Path | None = PapersOption,
    cache: Path | None = CacheOption,
) -> None:
    """Papers closest in meaning to one record.

    Example: atlas similar wanda --top 5
    """
    from catalog.search import QueryError, check_top
    from catalog.vocabulary import suggest

    try:
        check_top(top)
    except QueryError as exc:
        raise fail(str(exc)) from None
    records = records_or_exit(papers)
    ids = [r.id for r in records]
    if record_id not in ids:
        raise fail(f"no record '{record_id}'{suggest(record_id, ids)}")
    with exit_on_interrupt("the search index was not changed (its writes are atomic)"):
        hits = _searcher(records, cache_dir(cache)).similar(record_id, top)
    _show(hits, f"papers similar to {record_id}", as_json)


@app.command()
def index(
    papers: Path | None = PapersOption,
    cache: Path | None = CacheOption,
) -> None:
    """Build the search index (only new or edited records are embedded; nothing when fresh).

    Example: atlas index
    """
    from catalog.index import FIELDS

    records = records_or_exit(papers)
    with exit_on_interrupt("the search index was not changed (its writes are atomic)"):
        searcher = _searcher(records, cache_dir(cache), required=True)
    dense = searcher.dense
    embedded = dense.embedded // len(FIELDS)
    state = ("fresh, nothing to do" if dense.cached
             else f"built ({embedded} records embedded, {len(records) - embedded} reused)")
    where = cache_dir(cache) / "search" / dense.key
    if not dense.saved or not (where / "manifest.json").is_file():
        # e.g. the cache folder was removed while the index was built: nothing is on disk
        raise fail(f"the search index could not be saved in {where} (see the warning above); "
                   "nothing was written", code=2)
    err.print(Text.assemble(("ok", "green"), f": search index of {len(records)} records in {where}: {state}"))
