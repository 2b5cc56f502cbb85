"""Metadata for `atlas add` / `atlas enrich`: arXiv (the `arxiv` library), OpenAlex (`pyalex`), code links.

- `fetch_arxiv` reads the arXiv API (one request for up to 100 ids): title of the latest version, the
  full author list, the year of the first version, abstract, comments, journal reference, DOI.
- `code_link` finds the official code in the abstract or the comments field: a github.com / gitlab.com
  repository link first, else a *.github.io / *.gitlab.io page named in a sentence about code.
- `find_published` asks OpenAlex for the published version: by the publisher DOI arXiv reports, by the
  arXiv DOI (10.48550/arxiv.<id>), then by exact (normalised) title; only a location that is not a
  repository (arXiv, Zenodo, ...) counts as a venue.
- `duplicate_of` refuses a paper the catalog already has: same arXiv id, same normalised title, or a
  published version (its DOI or its title) of a record already there.
- `draft_record` / `draft_evidence` write the new files; `edit_record` changes given top-level keys of a
  record with a round-trip YAML library (ruamel.yaml), so comments, quoting and key order stay.

Every request goes through the `requests.Session` given (catalog.http.CachedSession: timeouts,
retries, cache); a failure to reach a service is a MetadataError with `network` True (exit 2).
"""

from __future__ import annotations

import datetime as dt
import io
import os
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import requests
import yaml

from catalog.schema import ARXIV_ID
from catalog.urls import UnsafeUrl, check_url
from catalog.validate import DRAFT, normalize_title

ARXIV_BATCH = 100  # ids per arXiv API request (its page size)

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
    "transactions on machine learning research": "TMLR",
    "journal of machine learning research": "JMLR",
}
# Sources that hold preprints or copies, not a publication (OpenAlex types them "repository" mostly).
NOT_A_VENUE = re.compile(r"arxiv|biorxiv|medrxiv|ssrn|zenodo|research square|preprints\.org|openreview"
                         r"|figshare|hal \(|europe pmc|pubmed|doaj|semantic scholar|digital commons"
                         r"|repository|dblp", re.I)


_FINDINGS = re.compile(r"^findings\b.*?(?:\b(acl|emnlp|naacl|eacl|aacl(?:-ijcnlp)?)\b.*)?$", re.I)


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


def _status(exc: Exception) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None) or getattr(exc, "status", None)


# -- arXiv ---------------------------------------------------------------------------------------------

@dataclass
class ArxivMeta:
    arxiv: str
    title: str
    authors: list[str]
    year: int
    abstract: str
    comment: str = ""
    journal_ref: str = ""
    doi: str = ""  # the publisher DOI arXiv reports, if any

    @property
    def abs_url(self) -> str:
        return f"https://arxiv.org/abs/{self.arxiv}"


def _one_line(text: str | None) -> str:
    return " ".join((text or "").split())


def _arxiv_client(session: requests.Session):
    import arxiv

    # Retries, timeouts and the cache are the session's; the library builds the URL and parses the feed.
    client = arxiv.Client(page_size=ARXIV_BATCH, delay_seconds=3.0, num_retries=0)
    client._session = session
    return client


def fetch_arxiv(ids: list[str], session: requests.Session) -> dict[str, ArxivMeta]:
    """Metadata of every id arXiv knows, by id (without version); ids it does not know are absent."""
    import arxiv

    for arxiv_id in ids:
        if not ARXIV_ID.match(arxiv_id):
            raise MetadataError(f"'{arxiv_id}' is not an arXiv id (expected like 2210.17323, "
                                "no version suffix)")
    found: dict[str, ArxivMeta] = {}
    client = _arxiv_client(session)
    for start in range(0, len(ids), ARXIV_BATCH):
        batch = ids[start:start + ARXIV_BATCH]
        try:
            results = list(client.results(arxiv.Search(id_list=batch, max_results=len(batch))))
        except arxiv.HTTPError as exc:
            if exc.status == 429 or exc.status >= 500:
                raise MetadataError(f"arXiv did not answer (HTTP {exc.status} after retries); try again "
                                    "later", network=True) from None
            raise MetadataError(f"arXiv refused the request for {', '.join(batch)} "
                                f"(HTTP {exc.status})") from None
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise _network_error("arXiv", exc) from None
        for r in results:
            short = re.sub(r"v\d+$", "", r.get_short_id())
            if short in batch:
                found[short] = ArxivMeta(
                    arxiv=short, title=_one_line(r.title), authors=[_one_line(a.name) for a in r.authors],
                    year=r.published.year, abstract=_one_line(r.summary), comment=_one_line(r.comment),
                    journal_ref=_one_line(r.journal_ref), doi=_one_line(r.doi).lower())
    return found


# -- code links ----------------------------------------------------------------------------------------

_URL = re.compile(r"https?://[^\s<>\"'`(){}\[\]|\\^]+", re.I)
_REPO_HOSTS = ("github.com", "www.github.com", "gitlab.com", "www.gitlab.com")
_PAGE_HOSTS = (".github.io", ".gitlab.io")
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z(])")


@dataclass
class CodeLink:
    url: str
    sentence: str  # the sentence of the abstract or comment that names it (quoted in the evidence file)
    where: str  # "abstract" or "comments"


def _clean_link(url: str) -> str:
    url = url.rstrip(".,;:!?")
    url = re.sub(r"\.git$", "", url).rstrip("/")
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if host.startswith("www."):
        host = host[4:]
    return f"https://{host}{parts.path}".rstrip("/")


def _link_rank(url: str, sentence: str) -> int | None:
    """0: a repository (owner/name on github.com or gitlab.com); 1: a project page in a sentence about
    code; None: not a code link."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    segments = [s for s in parts.path.split("/") if s]
    if host in _REPO_HOSTS:
        return 0 if len(segments) >= 2 else None
    if host.endswith(_PAGE_HOSTS) and re.search(r"\bcode|implementation|repositor", sentence, re.I):
        return 1
    return None


def code_link(abstract: str, comment: str = "") -> CodeLink | None:
    """The official code link the authors give in the abstract or the comments field, or None."""
    best: tuple[int, int, CodeLink] | None = None
    order = 0
    for where, text in (("abstract", abstract), ("comments", comment)):
        for sentence in _SENTENCE.split(text or ""):
            for match in _URL.finditer(sentence):
                url = _clean_link(match.group(0))
                rank = _link_rank(url, sentence)
                order += 1
                if rank is None:
                    continue
                try:
                    check_url(url)
                except UnsafeUrl:
                    continue
                if best is None or (rank, order) < best[:2]:
                    best = (rank, order, CodeLink(url, sentence.strip(), where))
    return best[2] if best else None


# -- OpenAlex ------------------------------------------------------------------------------------------

@dataclass
class Published:
    venue: str
    title: str
    year: int | None
    doi: str  # lower case, without https://doi.org/
    openalex: str


def _doi(value: str | None) -> str:
    return re.sub(r"^https?://(dx\.)?doi\.org/", "", (value or "").strip().lower())


def _openalex(session: requests.Session, works, url: str):
    """One OpenAlex request through pyalex (it parses); None when OpenAlex does not know the work."""
    import pyalex

    if os.environ.get("OPENALEX_EMAIL"):  # OpenAlex's polite pool: faster, fewer 429s
        pyalex.config.email = os.environ["OPENALEX_EMAIL"]
    try:
        return works._get_from_url(url, session)
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise _network_error("OpenAlex", exc) from None
    except requests.HTTPError as exc:
        status = _status(exc)
        if status == 404:
            return None
        if status is not None and (status == 429 or status >= 500):
            raise MetadataError(f"OpenAlex did not answer (HTTP {status} after retries); try again later",
                                network=True) from None
        raise MetadataError(f"OpenAlex refused the request (HTTP {status})") from None


def openalex_work(session: requests.Session, doi: str) -> dict | None:
    import pyalex

    works = pyalex.Works()
    works.params = f"https://doi.org/{_doi(doi)}"
    return _openalex(session, works, works.url)


def openalex_title_search(session: requests.Session, title: str) -> list[dict]:
    import pyalex

    # OpenAlex's title search reads words; punctuation (":" "," ...) only confuses its query parser
    works = pyalex.Works().search_filter(title=re.sub(r"[^\w\s-]", " ", title).strip())
    found = _openalex(session, works, works.url + "&per_page=10")
    return list(found or [])


def venue_of(work: dict) -> str | None:
    """'ICLR 2023'-style venue of a work: the first location that is a publication, not a repository."""
    for location in [work.get("primary_location")] + list(work.get("locations") or []):
        source = (location or {}).get("source") or {}
        name = _one_line(source.get("display_name"))
        if not name or source.get("type") == "repository" or NOT_A_VENUE.search(name):
            continue
        year = work.get("publication_year")
        findings = _FINDINGS.search(name)
        if findings:  # "Findings of the Association for Computational Linguistics: EMNLP 2023"
            conf = findings.group(1) or "ACL"
            return f"{conf.upper()} {year or ''}".strip() + " (Findings)"
        short = next((v for k, v in VENUE_ABBREVIATIONS.items() if k in name.lower()), name)
        return f"{short} {year}" if year and str(year) not in short else short
    return None


def _published(work: dict | None) -> Published | None:
    if not work:
        return None
    venue = venue_of(work)
    if venue is None:
        return None
    return Published(venue=venue, title=_one_line(work.get("display_name") or work.get("title")),
                     year=work.get("publication_year"), doi=_doi(work.get("doi")),
                     openalex=work.get("id", ""))


def find_published(session: requests.Session, *, title: str, arxiv_id: str | None = None,
                   doi: str | None = None, year: int | None = None) -> Published | None:
    """The published version OpenAlex knows (by DOI, arXiv DOI, then exact title), or None."""
    for key in (doi, f"10.48550/arxiv.{arxiv_id}" if arxiv_id else None):
        if key:
            found = _published(openalex_work(session, key))
            if found:
                return found
    wanted = normalize_title(title)
    for work in openalex_title_search(session, title) if wanted else []:
        same = normalize_title(work.get("display_name") or work.get("title") or "") == wanted
        if same and (year is None or (work.get("publication_year") or year) >= year):
            found = _published(work)
            if found:
                return found
    return None


# -- duplicates ----------------------------------------------------------------------------------------

def _links(record) -> str:
    return " ".join(str(u) for u in [record.url, record.code, *record.sources] if u).lower()


def duplicate_of(records, meta: ArxivMeta, published: Published | None) -> str | None:
    """Why `meta` is already in the catalog (naming the record), or None."""
    title = normalize_title(meta.title)
    dois = {d for d in (meta.doi, published.doi if published else "") if d}
    pub_title = normalize_title(published.title) if published else ""
    for r in records:
        if r.arxiv == meta.arxiv:
            return f"arXiv {meta.arxiv} is already in the catalog as '{r.id}' (papers/{r.id}.yaml)"
        if normalize_title(r.title) == title:
            return f"arXiv {meta.arxiv} has the same title as '{r.id}' (papers/{r.id}.yaml): {r.title}"
        links = _links(r)
        doi = next((d for d in dois if d in links), None)
        if doi or (pub_title and normalize_title(r.title) == pub_title):
            how = f"DOI {doi}" if doi else f"title '{published.title}'"
            return (f"arXiv {meta.arxiv} is a version of '{r.id}' (papers/{r.id}.yaml), already in the "
                    f"catalog ({how})")
    return None


# -- suggestions from the nearest records --------------------------------------------------------------

@dataclass
class Suggestion:
    themes: list[str]
    taxonomy: str
    tags: list[str]
    neighbours: list[str] = field(default_factory=list)


def suggest_from(hits: list[tuple[object, float]], max_tags: int = 6) -> Suggestion | None:
    """Themes, taxonomy leaf and tags voted by the nearest records, each weighted by its score relative
    to the best hit: the taxonomy leaf with the most weight, themes and tags with at least 0.8 of it."""
    hits = [(r, s) for r, s in hits if s > 0]
    if not hits:
        return None
    top = max(s for _, s in hits)
    votes: dict[str, dict[str, float]] = {"theme": {}, "leaf": {}, "tag": {}}
    for record, score in hits:
        w = score / top
        for kind, values in (("theme", record.themes), ("leaf", [record.taxonomy]), ("tag", record.tags)):
            for v in values:
                votes[kind][v] = votes[kind].get(v, 0.0) + w

    def ranked(kind: str) -> list[str]:
        return sorted(votes[kind], key=lambda v: (-votes[kind][v], v))

    leaf = ranked("leaf")[0]
    themes = [t for t in ranked("theme") if votes["theme"][t] >= 0.8][:3]
    root = leaf.split("/")[0]
    if root in votes["theme"] and root not in themes:
        themes = [root, *themes][:3]
    tags = [t for t in ranked("tag") if votes["tag"][t] >= 0.8][:max_tags]
    return Suggestion(themes=themes, taxonomy=leaf, tags=tags, neighbours=[r.id for r, _ in hits])


# -- the files written ---------------------------------------------------------------------------------

def slug_for(title: str) -> str:
    """'GPTQ: Accurate ...' -> 'gptq'; titles without a method name -> first three words."""
    head = title.split(":", 1)[0] if ":" in title else " ".join(title.split()[:3])
    return re.sub(r"[^a-z0-9]+", "-", head.lower()).strip("-")[:40].strip("-") or "paper"


SUMMARY_PROMPTS = {
    "problem": "what problem the paper addresses and why it matters",
    "method": "what the method does, the named mechanisms as the paper and its code describe them",
    "results": "the main results, only numbers the paper states",
    "limitations": "what it does not do or where it falls short",
}


def round_trip_yaml():
    """ruamel.yaml set up to write back exactly what it read: quotes, comments, flow lists, `null`."""
    from ruamel.yaml import YAML

    rt = YAML()
    rt.preserve_quotes = True
    rt.width = 4096  # never re-wrap a line
    rt.indent(mapping=2, sequence=4, offset=2)
    rt.representer.add_representer(
        type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    return rt


def _flow(values):
    from ruamel.yaml.comments import CommentedSeq

    seq = CommentedSeq(values)
    seq.fa.set_flow_style()
    return seq


def draft_record(meta: ArxivMeta, rid: str, *, venue: str | None, code: str | None,
                 suggestion: Suggestion | None, today: dt.date) -> str:
    """The text of papers/<rid>.yaml: metadata filled, suggestions marked, the summary a DRAFT."""
    from ruamel.yaml.comments import CommentedMap
    from ruamel.yaml.scalarstring import DoubleQuotedScalarString as Quoted

    s = suggestion or Suggestion(themes=["compression"], taxonomy="compression/survey", tags=[])
    data = CommentedMap()
    for key, value in (
        ("id", rid), ("title", Quoted(meta.title)), ("authors", _flow(meta.authors)), ("year", meta.year),
        ("venue", venue), ("arxiv", Quoted(meta.arxiv)), ("url", meta.abs_url), ("code", code),
        ("themes", _flow(s.themes)), ("taxonomy", s.taxonomy), ("tags", _flow(s.tags)),
    ):
        data[key] = value
    source = f"nearest records: {', '.join(s.neighbours)}" if s.neighbours else "no search index: defaults"
    data.yaml_set_comment_before_after_key(
        "themes", before=f"suggested by atlas add ({source}); check themes, taxonomy and tags")
    for key in ("themes", "taxonomy", "tags"):
        data.yaml_add_eol_comment("suggestion", key)
    summary = CommentedMap()
    for name, prompt in SUMMARY_PROMPTS.items():
        summary[name] = f"{DRAFT} write {prompt}, in your own words (the abstract is in evidence/{rid}.yaml)"
    data["summary"] = summary
    data["related"] = _flow([])
    data["sources"] = _flow([meta.abs_url])
    data["added"] = today
    out = io.StringIO()
    round_trip_yaml().dump(data, out)
    return out.getvalue()


def draft_evidence(meta: ArxivMeta, rid: str, code: CodeLink | None, today: dt.date) -> str:
    """The text of evidence/<rid>.yaml: the abstract verbatim and the metadata facts quoted from arXiv."""
    claims = [{"claim": "title (latest arXiv version)", "quote": meta.title, "source": meta.abs_url},
              {"claim": f"authors ({len(meta.authors)})", "quote": ", ".join(meta.authors),
               "source": meta.abs_url}]
    if code is not None:
        claims.append({"claim": f"official code: {code.url} (arXiv {code.where})", "quote": code.sentence,
                       "source": meta.abs_url})
    claims = [c for c in claims if len(c["quote"]) >= 10]  # the evidence schema's shortest quote
    data = {"id": rid, "abstract": meta.abstract,
            "checks": [{"checker": "atlas add (arXiv API metadata)", "date": today, "claims": claims}]}
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)


# -- atlas enrich: edit records in place ---------------------------------------------------------------

INSERT_AFTER = {"venue": "year", "code": "url"}


def edit_record(text: str, changes: dict[str, object]) -> str:
    """`text` with the given top-level keys set, everything else (comments, quotes, order) unchanged."""
    rt = round_trip_yaml()
    data = rt.load(text)
    same = io.StringIO()
    rt.dump(data, same)
    if same.getvalue() != text:
        raise MetadataError("the YAML library would rewrite parts of this file it was not asked to change; "
                            "edit it by hand")
    for key, value in changes.items():
        if key in data:
            data[key] = value
        else:
            keys = list(data)
            anchor = INSERT_AFTER.get(key)
            data.insert(keys.index(anchor) + 1 if anchor in keys else len(keys), key, value)
    out = io.StringIO()
    rt.dump(data, out)
    return _keep_comment_gaps(text, out.getvalue(), changes)


def _keep_comment_gaps(old: str, new: str, keys) -> str:
    """ruamel.yaml puts one space before a line's comment when the new value outgrows the old column;
    keep the spacing the file had (`venue: null  # ...` -> `venue: ICLR 2025  # ...`)."""
    for key in keys:
        pattern = re.compile(rf"(?m)^({re.escape(key)}: .*?\S)([ \t]+)(#.*)$")
        was = pattern.search(old)
        if was:
            new = pattern.sub(lambda m, gap=was.group(2): m.group(1) + gap + m.group(3), new, count=1)
    return new
