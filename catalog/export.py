"""Exports of validated records: JSON, BibTeX (bibtexparser) and CSL-JSON (Zotero, Pandoc)."""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter

import bibtexparser
from bibtexparser.model import Entry, Field
from pylatexenc.latexencode import unicode_to_latex

from catalog.schema import Record

STOPWORDS = {"a", "an", "the", "on", "of", "for", "to", "in", "and", "with", "is", "are", "do", "how",
             "towards", "toward"}
JOURNALS = ("Visual Intelligence", "TACL", "TMLR", "JMLR", "TPAMI", "Transactions", "Journal", "IJCV",
            "Nature", "Science")
CSL_TYPES = {"misc": "article", "article": "article-journal", "inproceedings": "paper-conference"}


def _ascii_word(text: str) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]", "", ascii_text.lower())


def family_name(author: str) -> str:
    """'Elias Frantar' -> 'Frantar'; 'Tim Dettmers' -> 'Dettmers'. Particles stay with the given name."""
    return author.strip().split()[-1]


def given_names(author: str) -> str:
    return " ".join(author.strip().split()[:-1])


def _bibtex_author(author: str) -> str:
    """'Elias Frantar' -> 'Frantar, Elias' in LaTeX; a single name has no trailing comma."""
    return f"{_latex(family_name(author))}, {_latex(given_names(author))}".rstrip(", ")


def citation_keys(records: list[Record]) -> dict[str, str]:
    """Stable keys like `frantar2022gptq`: first author, year, first content word of the title.

    Collisions get a, b, ... suffixes in order of record id, so a key never changes unless a
    colliding record is added with a smaller id.
    """
    base: dict[str, str] = {}
    for r in records:
        words = [_ascii_word(w) for w in re.split(r"[\s:/\-]+", r.title)]
        word = next((w for w in words if w and w not in STOPWORDS), "paper")
        base[r.id] = f"{_ascii_word(family_name(r.authors[0])) or 'anon'}{r.year}{word}"
    counts = Counter(base.values())
    keys, used = {}, Counter()
    for rid in sorted(base):
        key = base[rid]
        if counts[key] > 1:
            key = f"{key}{'abcdefghijklmnopqrstuvwxyz'[used[key]]}"
            used[base[rid]] += 1
        keys[rid] = key
    return keys


def _latex(text: str) -> str:
    return unicode_to_latex(text, non_ascii_only=False, unknown_char_policy="keep",
                            unknown_char_warning=False)  # CJK, emoji: kept as UTF-8 (biber reads it)


def _latex_title(title: str) -> str:
    """Escape, then brace words with inner capitals (GPTQ, LLaMA, SmoothQuant) so styles keep them."""
    out = []
    for word in re.split(r"(\s+)", title):
        encoded = _latex(word)
        segments = [re.sub(r"[^A-Za-z]", "", seg) for seg in re.split(r"[-/]", word)]
        if any(len(seg) > 1 and any(c.isupper() for c in seg[1:]) for seg in segments):
            encoded = "{" + encoded + "}"
        out.append(encoded)
    return "".join(out)


def venue_year(record: Record) -> int:
    """The year to cite: the venue's ('ICLR 2023') when it names one, else the first version's."""
    return record.venue_year or record.year


def _entry_type(record: Record) -> str:
    if record.venue is None:
        return "misc"
    return "article" if any(j in record.venue for j in JOURNALS) else "inproceedings"


def to_bibtex(records: list[Record], keys: dict[str, str] | None = None) -> str:
    """BibTeX for `records`; `keys` (from `citation_keys` over a larger set) keeps keys stable."""
    keys = keys or citation_keys(records)
    library = bibtexparser.Library()
    for r in sorted(records, key=lambda r: keys[r.id]):
        kind = _entry_type(r)
        fields = [
            # the writer adds the enclosing braces
            Field("title", _latex_title(r.title)),
            Field("author", " and ".join(_bibtex_author(a) for a in r.authors)),
            Field("year", str(venue_year(r))),
        ]
        if kind == "inproceedings":
            fields.append(Field("booktitle", _latex(r.venue)))
        elif kind == "article":
            fields.append(Field("journal", _latex(r.venue)))
        if r.arxiv:
            fields += [Field("eprint", r.arxiv), Field("archiveprefix", "arXiv")]
        fields.append(Field("url", str(r.url)))
        if r.code:
            fields.append(Field("note", "Code: \\url{" + str(r.code) + "}"))
        library.add(Entry(kind, keys[r.id], fields))
    return bibtexparser.write_string(library)


def to_csl(records: list[Record]) -> list[dict]:
    """CSL-JSON items (the citation-style-language schema) that Zotero imports."""
    keys = citation_keys(records)
    items = []
    for r in sorted(records, key=lambda r: keys[r.id]):
        kind = _entry_type(r)
        item = {
            "id": keys[r.id],
            "type": CSL_TYPES[kind],
            "title": r.title,
            "author": [{"family": family_name(a), "given": given_names(a)} for a in r.authors],
            "issued": {"date-parts": [[venue_year(r)]]},
            "URL": str(r.url),
        }
        if r.venue:
            item["container-title"] = r.venue
        if r.arxiv:
            item["DOI"] = f"10.48550/arXiv.{r.arxiv}"
            item["number"] = f"arXiv:{r.arxiv}"
            if kind == "misc":
                item["publisher"] = "arXiv"
        items.append(item)
    return items


def to_json(records: list[Record]) -> list[dict]:
    return [r.model_dump(mode="json", exclude_none=False) for r in sorted(records, key=lambda r: r.id)]


def export(records: list[Record], fmt: str) -> str:
    if fmt == "bibtex":
        return to_bibtex(records)
    if fmt == "csljson":
        return json.dumps(to_csl(records), indent=2, ensure_ascii=False) + "\n"
    if fmt == "json":
        return json.dumps(to_json(records), indent=2, ensure_ascii=False) + "\n"
    raise ValueError(f"unknown export format '{fmt}' (choose bibtex, csljson or json)")
