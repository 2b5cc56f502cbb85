"""Metadata from arXiv (the `arxiv` library) and OpenAlex (`pyalex`) for `atlas add` / `atlas enrich`.

`atlas add` drafts a record from arXiv metadata (title, full author list, year, url); the summary,
themes and taxonomy are left for a person to write, so the draft fails `atlas validate` until then.
`atlas enrich` proposes venues found in OpenAlex for records that have none.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import yaml

from catalog.schema import ARXIV_ID

# OpenAlex source names -> the short venue names the catalog uses.
VENUE_ABBREVIATIONS = {
    "international conference on learning representations": "ICLR",
    "neural information processing systems": "NeurIPS",
    "international conference on machine learning": "ICML",
    "meeting of the association for computational linguistics": "ACL",
    "empirical methods in natural language processing": "EMNLP",
    "north american chapter of the association for computational linguistics": "NAACL",
    "proceedings of the aaai conference on artificial intelligence": "AAAI",
    "transactions of the association for computational linguistics": "TACL",
    "conference on machine learning and systems": "MLSys",
    "computer vision and pattern recognition": "CVPR",
}


class MetadataError(Exception):
    """A lookup failed: unknown id (`network` False) or no answer from the service (`network` True)."""

    def __init__(self, message: str, *, network: bool = False):
        super().__init__(message)
        self.network = network


def _network_error(service: str, exc: Exception) -> MetadataError:
    """One short line for a failed request: the exception's first line, cut to 160 characters."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    detail = first if len(first) <= 160 else first[:159] + "…"
    return MetadataError(f"cannot reach {service} ({type(exc).__name__}: {detail}); check the network "
                         "connection", network=True)


def _is_not_found(exc: Exception) -> bool:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None) == 404 or getattr(exc, "status", None) == 404


@dataclass
class ArxivMeta:
    arxiv: str
    title: str
    authors: list[str]
    year: int
    abstract: str
    journal_ref: str | None


def fetch_arxiv(arxiv_id: str) -> ArxivMeta:
    import arxiv

    if not ARXIV_ID.match(arxiv_id):
        raise MetadataError(f"'{arxiv_id}' is not an arXiv id (expected like 2210.17323, no version suffix)")
    client = arxiv.Client(page_size=1, delay_seconds=0.0, num_retries=1)
    try:
        results = list(client.results(arxiv.Search(id_list=[arxiv_id], max_results=1)))
    except Exception as exc:  # arxiv raises several HTTP/parse error types
        if _is_not_found(exc):
            raise MetadataError(f"arXiv has no paper {arxiv_id}") from None
        raise _network_error("arXiv", exc) from None
    if not results:
        raise MetadataError(f"arXiv has no paper {arxiv_id}")
    r = results[0]
    return ArxivMeta(arxiv=arxiv_id, title=" ".join(r.title.split()), authors=[a.name for a in r.authors],
                     year=r.published.year, abstract=" ".join(r.summary.split()), journal_ref=r.journal_ref)


def slug_for(title: str) -> str:
    """'GPTQ: Accurate ...' -> 'gptq'; titles without a method name -> first three words."""
    head = title.split(":", 1)[0] if ":" in title else " ".join(title.split()[:3])
    return re.sub(r"[^a-z0-9]+", "-", head.lower()).strip("-")[:40] or "paper"


def draft_record(meta: ArxivMeta, record_id: str) -> str:
    data = {
        "id": record_id, "title": meta.title, "authors": meta.authors, "year": meta.year, "venue": None,
        "arxiv": meta.arxiv, "url": f"https://arxiv.org/abs/{meta.arxiv}", "code": None,
        "themes": ["compression"], "taxonomy": "compression/survey", "tags": [],
        "summary": {k: "TODO: write in your own words (see site/contributing.md)" for k in
                    ("problem", "method", "results", "limitations")},
        "related": [],
    }
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)
    return text.replace("arxiv: '", 'arxiv: "').replace(f'{meta.arxiv}\'', f'{meta.arxiv}"')


def openalex_venue(arxiv_id: str | None = None, doi: str | None = None) -> str | None:
    """'ICLR 2023'-style venue of the published version OpenAlex knows, or None."""
    import pyalex

    key = doi or f"10.48550/arxiv.{arxiv_id}".lower()
    try:
        work = pyalex.Works()[f"https://doi.org/{key}"]
    except Exception as exc:  # requests and pyalex raise several error types
        if _is_not_found(exc):
            return None  # OpenAlex does not know the paper: no venue to propose
        raise _network_error("OpenAlex", exc) from None
    for location in [work.get("primary_location")] + list(work.get("locations") or []):
        source = (location or {}).get("source") or {}
        name = source.get("display_name") or ""
        if not name or "arxiv" in name.lower() or source.get("type") == "repository":
            continue
        short = next((v for k, v in VENUE_ABBREVIATIONS.items() if k in name.lower()), name)
        return f"{short} {work.get('publication_year')}" if work.get("publication_year") else short
    return None


def set_venue(text: str, venue: str) -> str:
    """Replace the `venue:` line of a record's YAML text, leaving everything else as written."""
    value = yaml.safe_dump(venue, width=1000).split("\n", 1)[0]  # quoted only when YAML needs it
    new, n = re.subn(r"(?m)^venue:.*$", lambda _: f"venue: {value}", text, count=1)
    if n != 1:
        raise MetadataError("record has no top-level venue field")
    return new
