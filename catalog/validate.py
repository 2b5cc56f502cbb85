"""Checks that need the whole catalog: uniqueness, links, quality gates and coverage."""

from __future__ import annotations

import importlib.util
import re
import unicodedata
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from catalog.evidence import check_evidence_cached
from catalog.parse import Catalog, CatalogError, display_path
from catalog.schema import SUMMARY_WORDS
from catalog.vocabulary import suggest, vocabulary

# `atlas add` writes each summary field as "DRAFT: ..."; validate names every field still a draft.
DRAFT = "DRAFT:"


def normalize_title(title: str) -> str:
    """Case, accents, punctuation and spacing removed: 'GPTQ: Accurate…' -> 'gptqaccurate…'."""
    text = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]", "", text.lower())


def _module_exists(name: str) -> bool:
    """Whether `name` resolves to a source file, found without importing anything.

    Importing would pull in torch (seconds) for every `atlas` command; that the module also
    imports and registers is checked by tests/test_impl_links.py.
    """
    top, *rest = name.split(".")
    try:
        spec = importlib.util.find_spec(top)  # a top-level lookup executes nothing
    except (ImportError, ValueError):
        return False
    if spec is None:
        return False
    if not rest:
        return True
    for location in spec.submodule_search_locations or []:
        base = Path(location).joinpath(*rest)
        if base.with_suffix(".py").is_file() or (base / "__init__.py").is_file():
            return True
    return False


# DESIGN §1: a record of a method theme links running code (its own method or its family's);
# surveys, benchmarks and model reports link what they cover or say why nothing runs (`impl.none`).
METHOD_THEMES = ("quantization", "pruning", "distillation", "low-rank", "memory", "prompt", "finetuning",
                 "encoding")
REPORT_THEMES = ("compression", "benchmarks", "open-source-models")
# Whether a method-theme record without `impl` fails `atlas validate` (True) or is counted in a warning.
REQUIRE_IMPL = True
_REGISTER_CALL = re.compile(r"""\bregister\(\s*["']([a-z0-9][a-z0-9.+-]*)["']""")


def registered_names() -> dict[str, str]:
    """Registered method name -> module, read from the `@register("name", ...)` calls in the sources.

    A text scan, so `atlas validate` imports no torch; tests/test_impl_links.py checks the same links
    against the real registry.
    """
    try:
        spec = importlib.util.find_spec("reference_impls")
    except (ImportError, ValueError):
        return {}
    names: dict[str, str] = {}
    for location in (spec.submodule_search_locations or []) if spec else []:
        root = Path(location)
        for path in sorted(root.rglob("*.py")):
            rel = path.relative_to(root)
            if rel.parts[0] == "common" or path.name.startswith("_"):
                continue
            module = ".".join(("reference_impls", *rel.with_suffix("").parts))
            for name in _REGISTER_CALL.findall(path.read_text(encoding="utf-8", errors="replace")):
                names.setdefault(name, module)
    return names


def needs_impl(record) -> bool:
    return any(t in METHOD_THEMES for t in record.themes)


def missing_impl(records) -> list:
    """Records of a method theme that carry no `impl` at all."""
    return [r for r in records if needs_impl(r) and r.impl is None]


def cross_checks(catalog: Catalog, papers: Path, *, coverage: bool = False) -> list[CatalogError]:
    errors: list[CatalogError] = []

    def err(record_id: str, key: str, message: str) -> None:
        path = catalog.paths[record_id]
        errors.append(CatalogError(display_path(path), catalog.line(record_id, key), key, message))

    _check_unique(catalog, err)
    _check_records(catalog, err)
    errors.extend(draft_errors(catalog))
    _check_impls(catalog, err)
    errors.extend(check_evidence_cached({r.id: r for r in catalog.records}, papers))
    if coverage:
        errors.extend(coverage_errors(catalog, papers))
    return errors


def _check_unique(catalog: Catalog, err: Callable[[str, str, str], None]) -> None:
    """No two records share an id, an arXiv id or a normalized title."""
    for key, value_of, what in (
        ("id", lambda r: r.id, "id"),
        ("arxiv", lambda r: r.arxiv, "arXiv id"),
        ("title", lambda r: normalize_title(r.title), "title (after normalization)"),
    ):
        seen: dict[str, str] = {}
        for record in catalog.records:
            value = value_of(record)
            if not value:
                continue
            if value in seen:
                first = catalog.paths[seen[value]].name
                err(record.id, key, f"duplicate {what}: same as {first}")
            else:
                seen[value] = record.id


def _check_records(catalog: Catalog, err: Callable[[str, str, str], None]) -> None:
    """Links to records and implementations resolve; summary length and tags are in range."""
    ids = {r.id for r in catalog.records}
    for record in catalog.records:
        for rid in record.related:
            # a link to a file that failed to load is that file's error, not this one's
            if rid not in ids and rid not in catalog.broken:
                err(record.id, "related", f"unknown record id '{rid}'{suggest(rid, ids)}")
        if record.runnable and not _module_exists(record.impl.module):
            err(record.id, "impl", f"module '{record.impl.module}' cannot be imported")
        words = record.summary.word_count()
        lo, hi = SUMMARY_WORDS
        if not lo <= words <= hi and not _drafts(record):  # a draft is reported field by field
            err(record.id, "summary", f"{words} words; a summary has {lo}-{hi} words over its four fields")
        if not 1 <= len(record.tags):
            err(record.id, "tags", "at least one tag is required")


def _drafts(record) -> list[str]:
    return [name for name, text in record.summary.model_dump().items() if text.startswith(DRAFT)]


def draft_errors(catalog: Catalog) -> list[CatalogError]:
    """One line per summary field that is still the draft text `atlas add` wrote."""
    return [CatalogError(display_path(catalog.paths[r.id]),
                         catalog.lines.get(r.id, {}).get(("summary", name), 1), f"summary.{name}",
                         "still a draft from atlas add: write it in your own words "
                         f"(the abstract is in evidence/{r.id}.yaml)")
            for r in catalog.records for name in _drafts(r)]


def _impl_problem(record, names: dict[str, str]) -> str | None:
    impl = record.impl
    if impl is None:
        return None  # required by the catalog-wide gate (coverage_errors), so fixtures may omit it
    if impl.method and names.get(impl.method) != impl.module:
        return f"impl.method '{impl.method}' is not registered by {impl.module}{suggest(impl.method, names)}"
    if impl.fidelity == "family" and not impl.note:
        return "impl.note: one line saying how this paper's method differs from the family method linked"
    unknown = [n for n in impl.covers if n not in names]
    if unknown:
        return f"impl.covers: '{unknown[0]}' is not a registered method{suggest(unknown[0], names)}"
    if (impl.covers or impl.none is not None) and not any(t in REPORT_THEMES for t in record.themes):
        kind = "covers" if impl.covers else "none"
        return (f"impl.{kind} is for surveys, benchmarks and model reports (themes "
                f"{', '.join(REPORT_THEMES)}); link a module with fidelity family and a note instead")
    return None


def _check_impls(catalog: Catalog, err: Callable[[str, str, str], None]) -> None:
    names = registered_names() if any(r.impl for r in catalog.records) else {}
    for record in catalog.records:
        problem = _impl_problem(record, names)
        if problem:
            err(record.id, "impl", problem)


MISSING_IMPL = ("a record of a method theme links running code: impl.module (its own method, or its "
                "family's closest with fidelity family and a note), or impl.covers / impl.none for surveys, "
                "benchmarks and model reports")


def coverage_errors(catalog: Catalog, papers: Path) -> list[CatalogError]:
    """Catalog-wide gates: every taxonomy leaf has at least one paper; with REQUIRE_IMPL, every record of
    a method theme links running code."""
    used: dict[str, int] = defaultdict(int)
    for record in catalog.records:
        used[record.taxonomy] += 1
    errors = [
        CatalogError(str(papers), 0, "taxonomy", f"leaf '{leaf}' has no paper")
        for leaf in vocabulary().taxonomy
        if not used[leaf]
    ]
    if REQUIRE_IMPL:
        errors += [CatalogError(display_path(catalog.paths[r.id]), catalog.line(r.id, "themes"), "impl",
                                MISSING_IMPL) for r in missing_impl(catalog.records)]
    return errors
