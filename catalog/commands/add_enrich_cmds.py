"""Keeping the catalog current: `atlas add ARXIV_ID...` and `atlas enrich [ID...]` (catalog/ADD_ENRICH.md).

Both ask the network first and write afterwards: when arXiv or OpenAlex cannot be reached the command
prints one line, exits 2 and has written nothing. Files are replaced atomically (catalog.files).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import difflib
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import typer

from catalog.cli_app import PapersOption, app, papers_dir
from catalog.commands.catalog_cmds import err, fail
from catalog.vocabulary import suggest

NoCacheOption = typer.Option(False, "--no-cache", help="Ask arXiv and OpenAlex again instead of reading "
                                                       "answers kept under $ATLAS_CACHE/http (one day).")


def _session(no_cache: bool):
    from catalog.http import CachedSession

    backoff = float(os.environ.get("ATLAS_HTTP_BACKOFF", "1.0"))
    return CachedSession(use_cache=not no_cache, backoff=backoff)


def _say(message: str) -> None:
    err.print(message, markup=False, highlight=False)


def _load(directory: Path):
    """Every record that parses (drafts included: a catalog with a draft in progress still works)."""
    from catalog.load import load_catalog

    if not directory.is_dir():
        raise fail(f"catalog directory {directory} not found")
    return load_catalog(directory, checks=False)


def _check_new_id(directory: Path, rid: str) -> Path:
    from catalog.evidence import evidence_dir
    from catalog.schema import SLUG

    if not SLUG.match(rid):
        raise fail(f"--id: '{rid}' is not a slug (lower-case letters, digits, '-')")
    target = directory / f"{rid}.yaml"
    for path in (target, evidence_dir(directory) / f"{rid}.yaml"):
        if path.exists() or path.is_symlink():
            raise fail(f"{path} already exists; choose another --id")
    return target


def _free_id(directory: Path, base: str, year: int, taken: set[str]) -> str:
    from catalog.evidence import evidence_dir

    def free(rid: str) -> bool:
        return rid not in taken and not any(
            (d / f"{rid}.yaml").exists() or (d / f"{rid}.yaml").is_symlink()
            for d in (directory, evidence_dir(directory)))

    for rid in [base, f"{base}-{year}"] + [f"{base}-{year}-{i}" for i in range(2, 100)]:
        if free(rid):
            return rid
    raise fail(f"no free record id for '{base}'; give one with --id")  # pragma: no cover


# -- atlas add -------------------------------------------------------------------------------------------

@dataclass
class _Paper:
    meta: object  # ArxivMeta
    published: object | None  # Published


def _fetch(todo: list[str], session) -> tuple[dict[str, _Paper], dict[str, str]]:
    """arXiv and OpenAlex for every id (the network phase); (found, failure reason per id)."""
    from catalog.enrich import MetadataError, fetch_arxiv, find_published

    try:
        metas = fetch_arxiv(todo, session) if todo else {}
        found = {i: _Paper(m, find_published(session, title=m.title, arxiv_id=i, doi=m.doi, year=m.year))
                 for i, m in metas.items()}
    except MetadataError as exc:
        raise fail(str(exc), code=2 if exc.network else 1) from None
    return found, {i: f"arXiv has no paper {i}" for i in todo if i not in metas}


def _suggester(records, enabled: bool):
    """query text -> Suggestion from the nearest records (catalog.search), or None when unavailable."""
    if not enabled or not records:
        return lambda text: None
    from catalog.commands.search_cmds import cache_dir
    from catalog.enrich import suggest_from
    from catalog.index import CacheUnusable, ModelMissing
    from catalog.search import Searcher

    searcher = Searcher(records, cache_dir=cache_dir(None), progress=False, log=_say)
    try:
        searcher.dense_index()
    except (ModelMissing, CacheUnusable) as exc:
        _say(f"warning: no search index ({exc}); themes, taxonomy and tags are left at defaults")
        return lambda text: None
    return lambda text: suggest_from([(h.record, h.score) for h in searcher.search(text, top_k=5)])


def _write_pair(paper: Path, paper_text: str, evidence: Path, evidence_text: str) -> None:
    """Both files or neither: the evidence file first, removed again if the record cannot be written."""
    from catalog.files import OutputError, write_text_atomic

    evidence.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(evidence, evidence_text, "--papers")
    try:
        write_text_atomic(paper, paper_text, "--papers")
    except OutputError:
        evidence.unlink(missing_ok=True)
        raise


def _draft(directory: Path, rid: str, paper: _Paper, suggestion) -> tuple[Path, str, Path, str]:
    import yaml

    from catalog.enrich import code_link, draft_evidence, draft_record
    from catalog.evidence import Evidence, evidence_dir
    from catalog.schema import Record

    meta, today = paper.meta, dt.date.today()
    code = code_link(meta.abstract, meta.comment)
    venue = paper.published.venue if paper.published else None
    text = draft_record(meta, rid, venue=venue, code=code.url if code else None, suggestion=suggestion,
                        today=today)
    evidence = draft_evidence(meta, rid, code, today)
    Record.model_validate(yaml.safe_load(text))  # the draft is a record (only its summary is unfinished)
    Evidence.model_validate(yaml.safe_load(evidence))
    return directory / f"{rid}.yaml", text, evidence_dir(directory) / f"{rid}.yaml", evidence


@app.command()
def add(
    arxiv_ids: list[str] = typer.Argument(..., metavar="ARXIV_ID...",
                                          help="arXiv ids without version, e.g. 2210.17323."),
    record_id: str | None = typer.Option(None, "--id", help="Record id, with one ARXIV_ID "
                                                            "(default: from the title)."),
    suggest_fields: bool = typer.Option(True, "--suggest/--no-suggest",
                                        help="Suggest themes, taxonomy and tags from the nearest records."),
    no_cache: bool = NoCacheOption,
    papers: Path | None = PapersOption,
) -> None:
    """Draft papers/<id>.yaml and evidence/<id>.yaml from arXiv and OpenAlex metadata.

    Fills title, authors, year, arxiv, url, venue (when OpenAlex knows a published version), code (a
    repository linked in the abstract or comments), sources and added; suggests themes, taxonomy and
    tags from the nearest records. The summary is a DRAFT that `atlas validate` reports until you write
    it. Refuses papers already in the catalog. Example: atlas add 2210.17323 2306.00978
    """
    from catalog.files import OutputError
    from catalog.schema import ARXIV_ID

    directory = papers_dir(papers)
    catalog = _load(directory)
    if record_id is not None and len(arxiv_ids) > 1:
        raise fail("--id names one record; give one ARXIV_ID with it")
    if record_id is not None:  # everything the user typed is checked before the network is asked
        _check_new_id(directory, record_id)
    failed: dict[str, str] = {}
    todo: list[str] = []
    known = {r.arxiv: r.id for r in catalog.records if r.arxiv}
    for i in dict.fromkeys(arxiv_ids):
        if not ARXIV_ID.match(i):
            failed[i] = f"'{i}' is not an arXiv id (expected like 2210.17323, no version suffix)"
        elif i in known:
            failed[i] = f"arXiv {i} is already in the catalog as '{known[i]}' (papers/{known[i]}.yaml)"
        else:
            todo.append(i)
    if len(arxiv_ids) == 1 and failed:
        raise fail(next(iter(failed.values())))
    found, missing = _fetch(todo, _session(no_cache))
    failed.update(missing)
    records = list(catalog.records)
    suggester = _suggester(catalog.records, suggest_fields and bool(found))
    added: list[str] = []
    for i in todo:
        if i not in found:
            continue
        try:
            rid = _add_one(directory, found[i], record_id, records, suggester)
        except _Refused as exc:
            failed[i] = str(exc)
            continue
        except OutputError as exc:
            raise fail(str(exc), exc.code) from None
        added.append(rid)
    _report(arxiv_ids, added, failed)


class _Refused(Exception):
    pass


def _add_one(directory: Path, paper: _Paper, record_id: str | None, records: list, suggester) -> str:
    from types import SimpleNamespace

    from pydantic import ValidationError

    from catalog.enrich import duplicate_of, slug_for

    meta = paper.meta
    clash = duplicate_of(records, meta, paper.published)
    if clash:
        raise _Refused(clash)
    rid = record_id or _free_id(directory, slug_for(meta.title), meta.year, {r.id for r in records})
    try:
        target, text, evidence, evidence_text = _draft(directory, rid, paper,
                                                       suggester(f"{meta.title}. {meta.abstract}"))
    except ValidationError as exc:  # e.g. an author name longer than the schema allows
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise _Refused(f"the metadata does not make a valid record ({where}: {first['msg']}); "
                       "add it by hand") from None
    _write_pair(target, text, evidence, evidence_text)
    records.append(SimpleNamespace(id=rid, arxiv=meta.arxiv, title=meta.title, url=meta.abs_url, code=None,
                                   sources=[]))  # a second id in the same run is checked against it
    venue = paper.published.venue if paper.published else "no venue"
    code = re.search(r"^code: (.*)$", text, re.M).group(1)
    _say(f"wrote {target} and {evidence}: {meta.title} ({meta.year}, {venue}, code {code})")
    sys.stdout.write(f"{target}\n")
    return rid


def _report(arxiv_ids: list[str], added: list[str], failed: dict[str, str]) -> None:
    if len(arxiv_ids) == 1:
        if failed:
            raise fail(next(iter(failed.values())))
        _say("fill in the summary (and check the suggested themes, taxonomy and tags), then run "
             "atlas validate")
        return
    for i, reason in failed.items():
        err.print(f"error: {i}: {reason}", markup=False, highlight=False)
    total = len(dict.fromkeys(arxiv_ids))
    _say(f"added {len(added)} of {total}" + (f" ({', '.join(added)})" if added else "")
         + (f"; {len(failed)} failed: {', '.join(failed)}" if failed else ""))
    if failed:
        raise typer.Exit(1)


# -- atlas enrich ----------------------------------------------------------------------------------------

def _doi_of(record) -> str | None:
    for link in [record.url, *record.sources]:
        match = re.match(r"^https?://(dx\.)?doi\.org/(10\.\S+)$", str(link), re.I)
        if match and not match.group(2).lower().startswith("10.48550/"):
            return match.group(2)
    return None


def _targets(records: dict, ids: list[str] | None, everything: bool) -> list:
    unknown = [i for i in ids or [] if i not in records]
    if unknown:
        raise fail(f"no record '{unknown[0]}'{suggest(unknown[0], records)}")
    if ids:
        return [records[i] for i in dict.fromkeys(ids)]
    return [r for r in records.values() if everything or r.venue is None or r.code is None]


@contextlib.contextmanager
def _progress(total: int):
    """A transient bar on a terminal's stderr (OpenAlex takes a request or three per record); nothing when
    stderr is a file or a pipe, so an error stays the only line there."""
    if not sys.stderr.isatty() or total < 10:
        yield lambda: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    with Progress(TextColumn("OpenAlex"), BarColumn(), MofNCompleteColumn(), console=err,
                  transient=True) as bar:
        task = bar.add_task("lookups", total=total)
        yield lambda: bar.advance(task)


def _lookups(targets: list, session) -> tuple[dict, dict]:
    """The network phase of enrich: published versions (OpenAlex) and code links (arXiv)."""
    from catalog.enrich import MetadataError, code_link, fetch_arxiv, find_published

    venues, codes = {}, {}
    try:
        with _progress(len(targets)) as advance:
            for r in targets:
                doi = _doi_of(r)
                if r.arxiv or doi:
                    venues[r.id] = find_published(session, title=r.title, arxiv_id=r.arxiv, doi=doi,
                                                  year=r.year)
                advance()
        wanted = [r.arxiv for r in targets if r.code is None and r.arxiv]
        metas = fetch_arxiv(wanted, session) if wanted else {}
    except MetadataError as exc:
        raise fail(str(exc), code=2 if exc.network else 1) from None
    for r in targets:
        meta = metas.get(r.arxiv) if r.code is None and r.arxiv else None
        codes[r.id] = code_link(meta.abstract, meta.comment) if meta else None
    return venues, codes


def _changes(record, published, code) -> dict:
    changes = {}
    if published is not None:
        if record.venue is None:
            changes["venue"] = published.venue
        elif published.venue != record.venue:
            _say(f"note: {record.id}: venue is '{record.venue}', OpenAlex reports '{published.venue}' "
                 "(not changed; edit by hand if OpenAlex is right)")
    if code is not None and record.code is None:
        changes["code"] = code.url
    return changes


@app.command()
def enrich(
    ids: list[str] = typer.Argument(None, help="Record ids (default: every record without a venue or code)."),
    yes: bool = typer.Option(False, "--yes", "-y", "--write",
                             help="Write the changes shown (without it nothing is written)."),
    everything: bool = typer.Option(False, "--all", help="Check every record, also those with venue and "
                                                         "code (disagreements are printed as notes)."),
    no_cache: bool = NoCacheOption,
    papers: Path | None = PapersOption,
) -> None:
    """Refresh venues (OpenAlex) and code links (arXiv abstract/comments): a diff per file; --yes writes.

    Only empty fields are filled (venue: null, code: null); comments, quoting and key order are kept.
    Example: atlas enrich (shows what would change), then atlas enrich --yes (writes it)
    """
    from catalog.enrich import MetadataError, edit_record
    from catalog.files import OutputError, write_text_atomic
    from catalog.parse import display_path

    catalog = _load(papers_dir(papers))
    targets = _targets({r.id: r for r in catalog.records}, ids, everything)
    venues, codes = _lookups(targets, _session(no_cache))
    changed = 0
    for r in targets:
        changes = _changes(r, venues.get(r.id), codes.get(r.id))
        if not changes:
            continue
        path = catalog.paths[r.id]
        try:
            old = path.read_text(encoding="utf-8")
            new = edit_record(old, changes)
        except OSError as exc:
            raise fail(f"{path}: cannot read ({exc.strerror})", 2) from None
        except MetadataError as exc:
            _say(f"note: {r.id}: {exc}")
            continue
        shown = display_path(path)
        a, b = (shown, shown) if Path(shown).is_absolute() else (f"a/{shown}", f"b/{shown}")
        sys.stdout.writelines(difflib.unified_diff(old.splitlines(True), new.splitlines(True), a, b))
        changed += 1
        if yes:
            try:
                write_text_atomic(path, new, "--papers")
            except OutputError as exc:
                raise fail(str(exc), exc.code) from None
    verb = "changed" if yes else "would change"
    hint = "" if yes or not changed else "; run again with --yes to write"
    _say(f"enrich: {len(targets)} record(s) checked, {changed} file(s) {verb}{hint}")
