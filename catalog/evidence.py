"""Evidence side files, `evidence/<id>.yaml`: the sentence behind each fact of a record.

A record lists the URLs its facts were checked against (`sources:`); its evidence file keeps, per
independent check, every number and named mechanism of the summary with the quoted sentence of the
paper body or the official code that supports it. A reader (or a later check) can follow them; the
paper page shows them under "Sources".

    id: gqa
    abstract: >-                 # optional: the arXiv abstract verbatim, for the copy check below
      Multi-query attention (MQA), which only uses ...
    checks:
      - checker: lead            # who checked (a person or a session), and when
        date: 2026-12-03
        claims:
          - claim: about 5% of the original pre-training compute
            quote: "...uptrained with 5% of original pre-training compute..."
            source: https://arxiv.org/html/2305.13245     # one of the record's sources
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from catalog.parse import CatalogError, display_path, duplicate_key


class Claim(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    claim: str = Field(min_length=3)
    quote: str = Field(min_length=10)
    source: str = Field(pattern=r"^https?://")


class Check(BaseModel):
    model_config = ConfigDict(extra="forbid")
    checker: str = Field(min_length=1)
    date: dt.date
    claims: list[Claim] = Field(min_length=1)


class Evidence(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    abstract: str | None = None
    checks: list[Check] = Field(min_length=1)


# libyaml's loader where PyYAML has it: ~560 files are read by every validate and site build
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def evidence_dir(papers: Path) -> Path:
    return Path(papers).resolve().parent / "evidence"


def load_evidence(papers: Path) -> tuple[dict[str, Evidence], list[CatalogError]]:
    """Every `evidence/*.yaml` next to the papers directory, and one error line per bad file."""
    found: dict[str, Evidence] = {}
    errors: list[CatalogError] = []
    folder = evidence_dir(papers)
    for path in sorted(folder.glob("*.yaml")) if folder.is_dir() else []:
        shown = display_path(path)
        try:
            loader = _LOADER(path.read_text(encoding="utf-8"))
            try:
                node = loader.get_single_node()
                repeated = duplicate_key(node) if node is not None else None
                data = loader.construct_document(node) if node is not None and not repeated else None
            finally:
                loader.dispose()
            if repeated:
                line, field, first = repeated
                errors.append(CatalogError(shown, line, field,
                                           f"duplicate key (also on line {first}); YAML keeps only the last"))
                continue
            ev = Evidence.model_validate(data)
        except UnicodeDecodeError as e:
            errors.append(CatalogError(shown, 0, "file", f"not UTF-8 text ({e.reason} at byte {e.start})"))
            continue
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            errors.append(CatalogError(shown, mark.line + 1 if mark else 0, "yaml", str(e).splitlines()[0]))
            continue
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "file"
            errors.append(CatalogError(shown, 0, where, first["msg"]))
            continue
        if ev.id != path.stem:
            errors.append(CatalogError(shown, 1, "id", f"'{ev.id}' differs from the file name '{path.stem}'"))
            continue
        found[ev.id] = ev
    return found, errors


COPY_RUN = 10  # words: a summary may share shorter runs with the abstract (names, set phrases)


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+(?:[.'-][a-z0-9]+)*", text.lower())


def copied_run(summary: str, abstract: str, n: int = COPY_RUN) -> str | None:
    """The first run of `n` consecutive words of `summary` that also occurs in `abstract`, or None."""
    a = _words(abstract)
    grams = {tuple(a[i:i + n]) for i in range(len(a) - n + 1)}
    s = _words(summary)
    for i in range(len(s) - n + 1):
        if tuple(s[i:i + n]) in grams:
            return " ".join(s[i:i + n])
    return None


def check_evidence(records: dict, papers: Path) -> list[CatalogError]:
    """Each evidence file belongs to a record, quotes only sources that record lists, and the record's
    summary copies no run of COPY_RUN words from the stored abstract (the prose must be our own)."""
    found, errors = load_evidence(papers)
    for rid, ev in found.items():
        shown = display_path(evidence_dir(papers) / f"{rid}.yaml")
        record = records.get(rid)
        if record is None:
            errors.append(CatalogError(shown, 1, "id", f"no record papers/{rid}.yaml"))
            continue
        if ev.abstract:
            for name, text in record.summary.model_dump().items():
                run = copied_run(text, ev.abstract)
                if run:
                    errors.append(CatalogError(display_path(papers / f"{rid}.yaml"), 0, f"summary.{name}",
                                               f"copies {COPY_RUN} words of the abstract: '{run}'"))
        listed = {str(u).rstrip("/") for u in record.sources}
        for check in ev.checks:
            for c in check.claims:
                if c.source.rstrip("/") not in listed:
                    errors.append(CatalogError(shown, 0, "source",
                                               f"{c.source} is not in the record's sources"))
    return errors


def _check_key(records: dict, papers: Path) -> str:
    """Hash of everything check_evidence reads: each evidence file's name and bytes, each record's id,
    summary and sources, and the code that parses and checks them (this file and catalog/parse.py)."""
    h = hashlib.sha256(f"{yaml.__version__}|{_LOADER.__name__}".encode())
    for code in (Path(__file__), Path(__file__).with_name("parse.py")):
        h.update(code.read_bytes())
    folder = evidence_dir(papers)
    for path in sorted(folder.glob("*.yaml")) if folder.is_dir() else []:
        h.update(b"\0" + path.name.encode() + b"\0" + path.read_bytes())
    for rid in sorted(records):
        r = records[rid]
        h.update(json.dumps([rid, r.summary.model_dump(), [str(u) for u in r.sources]]).encode())
    return h.hexdigest()[:32]


def check_evidence_cached(records: dict, papers: Path) -> list[CatalogError]:
    """check_evidence, skipped when the same evidence files, summaries, sources and checking code have
    passed before (a marker named by their hash in `$ATLAS_CACHE`, default `.atlas` beside papers/).

    Parsing the ~830 evidence files was 55% of loading the catalog (1.0 of 1.8 s), paid by every
    `atlas search` and `atlas show`; reading and hashing them takes ~0.05 s. Only a clean pass is
    remembered, so errors are always found again and reported with the current paths."""
    cache = Path(os.environ.get("ATLAS_CACHE", Path(papers).resolve().parent / ".atlas")) / "checks"
    try:
        marker = cache / f"evidence-ok-{_check_key(records, papers)}"
    except OSError:  # an evidence file vanished while being read: check for real
        return check_evidence(records, papers)
    if marker.is_file():
        return []
    errors = check_evidence(records, papers)
    if not errors:
        try:
            cache.mkdir(parents=True, exist_ok=True)
            for old in cache.glob("evidence-ok-*"):
                old.unlink(missing_ok=True)
            marker.touch()
        except OSError:  # a read-only checkout still works, only without the shortcut
            pass
    return errors
