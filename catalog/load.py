"""Load `papers/*.yaml` into validated records: the one place records are read.

`catalog.parse` reads each file (YAML, schema, line numbers), `catalog.validate` checks across
records; every problem is a `CatalogError` line `papers/x.yaml:LINE: field: message`.
"""

from __future__ import annotations

from pathlib import Path

from catalog.parse import Catalog, CatalogError, display_path, parse_dir, parse_file
from catalog.schema import Record
from catalog.validate import cross_checks

__all__ = ["Catalog", "CatalogError", "CatalogInvalid", "display_path", "load_catalog", "load_records",
           "parse_file"]


class CatalogInvalid(Exception):
    """The catalog has errors; `errors` lists every one, `str()` gives one line each."""

    def __init__(self, errors: list[CatalogError]):
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))


def load_catalog(papers: Path, *, checks: bool = True, coverage: bool = False) -> Catalog:
    """Read every `*.yaml` in `papers`; return the valid records and every error found.

    `checks` adds the cross-record checks of `catalog.validate` (uniqueness, links);
    `coverage` adds the catalog-wide quality gates (every taxonomy leaf used).
    """
    papers = Path(papers)
    if not papers.is_dir():
        raise CatalogInvalid([CatalogError(str(papers), 0, "papers",
                                           "catalog directory not found (use --papers DIR or ATLAS_PAPERS)")])
    catalog = parse_dir(papers)
    if checks:
        catalog.errors.extend(cross_checks(catalog, papers, coverage=coverage))
    catalog.errors.sort()
    return catalog


def load_records(papers: Path) -> list[Record]:
    """The validated records, or CatalogInvalid listing every error (for downstream consumers)."""
    catalog = load_catalog(papers)
    if catalog.errors:
        raise CatalogInvalid(catalog.errors)
    return catalog.records
