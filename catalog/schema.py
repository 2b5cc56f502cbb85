"""The paper record (DESIGN §1) as a pydantic model.

Field-level rules live here (types, slugs, vocabulary, arXiv id format); rules that need the whole
catalog (uniqueness, `related` targets, coverage) live in `catalog.validate`.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    HttpUrl,
    ValidationInfo,
    field_validator,
    model_validator,
)

from catalog.urls import check_url
from catalog.vocabulary import suggest, vocabulary

SLUG = re.compile(r"^[a-z0-9][a-z0-9-]*$")
# New-style arXiv ids (yymm.nnnn[n]) and old-style ones (archive/yymmnnn), without version suffix.
ARXIV_ID = re.compile(r"^(\d{4}\.\d{4,5}|[a-z-]+(\.[A-Z]{2})?/\d{7})$")
SUMMARY_WORDS = (80, 220)


def _known_theme(theme: str) -> str:
    themes = vocabulary().themes
    if theme not in themes:
        raise ValueError(f"unknown theme '{theme}'{suggest(theme, themes)}")
    return theme


def _known_tag(tag: str) -> str:
    tags = vocabulary().tags
    if tag not in tags:
        raise ValueError(f"unknown tag '{tag}'{suggest(tag, tags)}; add it to catalog/data/tags.txt first")
    return tag


def _record_id(rid: str) -> str:
    if not SLUG.match(rid):
        raise ValueError(f"'{rid}' is not a record id")
    return rid


# Line breaks, other control characters and bidirectional overrides (which reorder what a reader sees).
_NOT_ONE_LINE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


_VENUE_KIND = re.compile(r"\b(findings|workshops?)\b", re.IGNORECASE)


def _venue_form(text: str) -> str:
    """One spelling for a Findings or workshop acceptance, so that lists and filters agree."""
    kind = _VENUE_KIND.search(text)
    if kind and not text.endswith(("(Findings)", "(Workshop)")):
        word = "Findings" if kind.group(1).lower() == "findings" else "Workshop"
        raise ValueError(f"write a {word} acceptance as 'CONF YEAR ({word})', e.g. 'ACL 2024 ({word})'")
    return text


def _one_line(limit: int):
    def check(text: str) -> str:
        bad = _NOT_ONE_LINE.search(text)
        if bad:
            char = bad.group(0)
            what = "a line break" if char in "\r\n\u2028\u2029" else f"control character {char!r}"
            raise ValueError(f"must be one line of text; it contains {what}")
        if len(text) > limit:
            raise ValueError(f"{len(text)} characters; at most {limit}")
        return text
    return AfterValidator(check)


def _link(value):
    return None if value is None else check_url(value)


# Per-item validators, so an error's location names the offending list element (and its line).
Theme = Annotated[str, AfterValidator(_known_theme)]
Tag = Annotated[str, AfterValidator(_known_tag)]
RecordId = Annotated[str, AfterValidator(_record_id)]


class Summary(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    problem: str = Field(min_length=1)
    method: str = Field(min_length=1)
    results: str = Field(min_length=1)
    limitations: str = Field(min_length=1)

    def word_count(self) -> int:
        return sum(len(text.split()) for text in (self.problem, self.method, self.results, self.limitations))


METHOD_NAME = r"^[a-z0-9][a-z0-9.+-]*$"


class Impl(BaseModel):
    """How to run a paper (DESIGN §1), in one of three shapes:

    - `module` + `fidelity` (+ `method`, the registered name when the module registers several, and
      `note`, one line on how the paper's method differs when the fidelity is `family`);
    - `covers`: the registered methods a survey, benchmark or model report covers (+ `note`);
    - `none`: why nothing runs (accepted by `catalog.validate` for those records only).
    """

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    module: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
    fidelity: Literal["exact", "simplified", "family"] | None = None
    method: str | None = Field(None, pattern=METHOD_NAME)
    note: str | None = Field(None, min_length=1, max_length=300, pattern=r"^[^\n]*$")
    covers: list[Annotated[str, Field(pattern=METHOD_NAME)]] = Field(default_factory=list)
    none: str | None = Field(None, min_length=1, max_length=300, pattern=r"^[^\n]*$")

    @model_validator(mode="after")
    def _one_shape(self) -> Impl:
        shapes = [n for n, given in (("module", self.module), ("covers", self.covers),
                                     ("none", self.none is not None)) if given]
        if len(shapes) != 1:
            raise ValueError("give exactly one of module (with fidelity), covers (method names) or none "
                             f"(a reason); got {', '.join(shapes) or 'neither'}")
        if self.module and self.fidelity is None:
            raise ValueError("fidelity is required with module (exact, simplified or family)")
        if not self.module and (self.fidelity or self.method):
            raise ValueError("fidelity and method go with module")
        if self.none is not None and self.note:
            raise ValueError("none is the reason; note goes with module or covers")
        return self

    @property
    def kind(self) -> str:
        """own (exact/simplified), family, covers or none: the coverage class of the link."""
        if self.module:
            return "family" if self.fidelity == "family" else "own"
        return "covers" if self.covers else "none"


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    id: str
    title: Annotated[str, _one_line(300)] = Field(min_length=3)
    authors: list[Annotated[str, _one_line(100)]] = Field(min_length=1)
    year: int = Field(ge=1950, le=2100)
    venue: Annotated[str, _one_line(100), AfterValidator(_venue_form)] | None = None
    arxiv: str | None = None
    url: Annotated[HttpUrl, BeforeValidator(_link)]  # strict: catalog.urls
    code: Annotated[HttpUrl | None, BeforeValidator(_link)] = None
    themes: list[Theme] = Field(min_length=1, max_length=3)
    taxonomy: str
    tags: list[Tag] = Field(default_factory=list)
    summary: Summary
    impl: Impl | None = None
    related: list[RecordId] = Field(default_factory=list)
    # Where the facts were checked: paper body (arXiv HTML/PDF, proceedings page), official code README.
    # Shown on the paper page as "Sources"; quotes per claim live in evidence/<id>.yaml.
    sources: list[Annotated[HttpUrl, BeforeValidator(_link)]] = Field(default_factory=list)
    added: dt.date | None = None

    @field_validator("id")
    @classmethod
    def _slug(cls, value: str) -> str:
        if not SLUG.match(value):
            raise ValueError(f"'{value}' is not a slug (lower-case letters, digits and '-', "
                             "starting with a letter or digit)")
        return value

    @field_validator("arxiv", mode="before")
    @classmethod
    def _arxiv(cls, value):
        if value is None:
            return None
        if not isinstance(value, str):
            # YAML reads 2210.17323 as a float and silently drops trailing zeros: insist on a string.
            raise ValueError('arXiv id must be a quoted string like "2210.17323", '
                             f"got {type(value).__name__} {value!r}")
        if not ARXIV_ID.match(value.strip()):
            raise ValueError(f"'{value}' is not an arXiv id "
                             '(expected like "2210.17323", without a version suffix)')
        return value.strip()

    @field_validator("authors")
    @classmethod
    def _authors(cls, value: list[str]) -> list[str]:
        for name in value:
            if not name.strip():
                raise ValueError("empty author name")
        return value

    @field_validator("themes", "tags", "related")
    @classmethod
    def _no_repeats(cls, value: list[str], info: ValidationInfo) -> list[str]:
        if len(set(value)) != len(value):
            noun = {"themes": "theme", "tags": "tag", "related": "related record"}[info.field_name]
            raise ValueError(f"a {noun} is listed twice")
        return value

    @field_validator("taxonomy")
    @classmethod
    def _taxonomy(cls, value: str) -> str:
        leaves = vocabulary().taxonomy
        if value not in leaves:
            raise ValueError(f"unknown taxonomy path '{value}'{suggest(value, leaves)}")
        return value

    @field_validator("sources")
    @classmethod
    def _sources(cls, value: list) -> list:
        seen = set()
        for url in value:
            if str(url) in seen:
                raise ValueError(f"a source is listed twice: {url}")
            seen.add(str(url))
        return value

    @model_validator(mode="after")
    def _consistency(self) -> Record:
        if self.arxiv and re.match(r"^\d{4}\.", self.arxiv):
            arxiv_year = 2000 + int(self.arxiv[:2])
            # A paper can appear in proceedings before its arXiv version (then year = venue year).
            published_first = self.venue_year == self.year < arxiv_year
            if arxiv_year != self.year and not published_first:
                raise ValueError(f"year: {self.year} does not match the arXiv id {self.arxiv} "
                                 f"(first version {arxiv_year})")
        if self.id in self.related:
            raise ValueError("related: a record cannot be related to itself")
        return self

    # -- derived, used by exports, search and the site -------------------------------------------
    @property
    def venue_year(self) -> int | None:
        """The year a venue string names ('ICLR 2023' -> 2023), if any."""
        match = re.search(r"\b(19|20)\d\d\b", self.venue or "")
        return int(match.group(0)) if match else None

    @property
    def arxiv_url(self) -> str | None:
        return f"https://arxiv.org/abs/{self.arxiv}" if self.arxiv else None

    @property
    def runnable(self) -> Impl | None:
        """The impl when it names a module to run (own or family method), else None."""
        return self.impl if self.impl is not None and self.impl.module else None

    @property
    def summary_text(self) -> str:
        s = self.summary
        return " ".join((s.problem, s.method, s.results, s.limitations))
