"""Search over the catalog: dense (MiniLM + faiss), keyword (BM25) and their fusion.

`Searcher` is the one API that the CLI and the site use. It is built from validated records; the
embedding model is loaded at most once per Searcher and only when a query needs it. Filters are
applied before ranking is cut to top-k, so a filter never hides a hit that a deeper list would
have had. The defaults below (mode, pooling, fusion) are the ones `catalog.search_bench` measured
best on the tuning part of `catalog/data/search_eval.jsonl`; the figures are in results/search.json.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from catalog.index import FIELDS, MAX_TOKENS, DenseIndex, QueryEncoder, load_or_build
from catalog.schema import Record
from catalog.vocabulary import suggest, vocabulary

MODES = ("hybrid", "dense", "bm25")
DEFAULT_MODE = "hybrid"
DEFAULT_CACHE = Path(".atlas")
EXACT_LIMIT = 5_000  # up to this many records every list is ranked in full (fusion is then exact)
LONG_QUERY_CHARS = 600  # beyond this, check whether the dense part had to cut the query


class QueryError(ValueError):
    """Bad input from the user (exit 1)."""


@dataclass(frozen=True)
class SearchConfig:
    """Choices measured by search_bench; the defaults are the measured best."""

    pooling: str = "mean"  # mean of the field vectors, or "max": a record scores by its best field
    field_weights: tuple[float, ...] = (2.0, 1.0, 1.0, 1.0, 1.0)  # FIELDS order, for "mean"
    fusion: str = "score"  # weighted sum of max-normalized scores; "minmax"; "rrf" (reciprocal rank)
    rrf_k: float = 60.0
    dense_weight: float = 1.0  # bm25 weight is 1
    title_repeat: int = 1  # BM25: title, tags and id repeated this many times (x2, x3 measured no better)


@dataclass(frozen=True)
class Filters:
    themes: tuple[str, ...] = ()  # any of these
    taxonomy: str | None = None  # a path prefix by whole segments: "pruning" or "quantization/ptq"
    year_from: int | None = None
    year_to: int | None = None
    venue: str | None = None  # case-insensitive substring; "preprint" matches records without venue
    has_code: bool | None = None
    has_impl: bool | None = None

    def check(self) -> None:
        vocab = vocabulary()
        for theme in self.themes:
            if theme not in vocab.themes:
                raise QueryError(f"unknown theme '{theme}'{suggest(theme, vocab.themes)}")
        if self.taxonomy is not None:
            prefixes = {"/".join(leaf.split("/")[:i])
                        for leaf in vocab.taxonomy for i in range(1, leaf.count("/") + 2)}
            if self.taxonomy.strip("/") not in prefixes:
                hint = suggest(self.taxonomy, sorted(prefixes))
                raise QueryError(f"unknown taxonomy path '{self.taxonomy}'{hint}")
        if self.year_from is not None and self.year_to is not None and self.year_from > self.year_to:
            raise QueryError(f"--year-from {self.year_from} is after --year-to {self.year_to}")

    def active(self) -> bool:
        return self != Filters()

    def accepts(self, r: Record) -> bool:
        tax = self.taxonomy.strip("/") if self.taxonomy else None
        venue = (self.venue or "").casefold()
        return ((not self.themes or any(t in r.themes for t in self.themes))
                and (tax is None or r.taxonomy == tax or r.taxonomy.startswith(tax + "/"))
                and (self.year_from is None or r.year >= self.year_from)
                and (self.year_to is None or r.year <= self.year_to)
                and (not venue or (venue in r.venue.casefold() if r.venue else venue == "preprint"))
                and (self.has_code is None or (r.code is not None) == self.has_code)
                and (self.has_impl is None or (r.runnable is not None) == self.has_impl))


@dataclass
class Hit:
    record: Record
    score: float

    def to_json(self) -> dict:
        r = self.record
        return {"id": r.id, "title": r.title, "year": r.year, "venue": r.venue, "themes": r.themes,
                "arxiv": r.arxiv, "url": str(r.url), "score": round(float(self.score), 6),
                "impl": r.impl.model_dump(exclude_defaults=True) if r.impl else None}


@dataclass
class _Columns:
    """Record attributes as arrays, so filtering 100,000 records costs a few array operations."""

    year: np.ndarray
    code: np.ndarray
    impl: np.ndarray
    themes: dict[str, np.ndarray]
    leaves: list[str]
    leaf_of: np.ndarray  # index into leaves
    venues: list[str]  # casefolded; "" for preprints
    venue_of: np.ndarray

    @classmethod
    def of(cls, records: Sequence[Record]) -> _Columns:
        n = len(records)
        themes: dict[str, np.ndarray] = {}
        for i, r in enumerate(records):
            for t in r.themes:
                themes.setdefault(t, np.zeros(n, dtype=bool))[i] = True
        leaves = sorted({r.taxonomy for r in records})
        venues = sorted({(r.venue or "").casefold() for r in records})
        leaf_pos = {leaf: i for i, leaf in enumerate(leaves)}
        venue_pos = {venue: i for i, venue in enumerate(venues)}
        return cls(year=np.array([r.year for r in records], dtype=int),
                   code=np.array([r.code is not None for r in records], dtype=bool),
                   impl=np.array([r.runnable is not None for r in records], dtype=bool),
                   themes=themes, leaves=leaves,
                   leaf_of=np.array([leaf_pos[r.taxonomy] for r in records], dtype=int), venues=venues,
                   venue_of=np.array([venue_pos[(r.venue or "").casefold()] for r in records], dtype=int))

    def mask(self, f: Filters) -> np.ndarray:
        keep = np.ones(len(self.year), dtype=bool)
        if f.themes:
            keep &= np.logical_or.reduce([self.themes.get(t, np.zeros_like(keep)) for t in f.themes])
        if f.taxonomy:
            tax = f.taxonomy.strip("/")
            ok = np.array([leaf == tax or leaf.startswith(tax + "/") for leaf in self.leaves], dtype=bool)
            keep &= ok[self.leaf_of]
        if f.year_from is not None:
            keep &= self.year >= f.year_from
        if f.year_to is not None:
            keep &= self.year <= f.year_to
        if f.venue:
            v = f.venue.casefold()
            ok = np.array([(v in venue) if venue else v == "preprint" for venue in self.venues], dtype=bool)
            keep &= ok[self.venue_of]
        if f.has_code is not None:
            keep &= self.code == f.has_code
        if f.has_impl is not None:
            keep &= self.impl == f.has_impl
        return keep


# -- keyword side -------------------------------------------------------------------------------------

_HYPHENATED = re.compile(r"\w+(?:[-:/]\w+)+")
_TOKEN = re.compile(r"\w+")
_STOPWORDS = frozenset("""a an and are as at be been but by can do does for from has have how i if in into
is it its not of on or our such than that the their them then there these they this those to using via was
we were what when where which while who why will with without paper papers method methods
approach""".split()) - {"without"}


def _stem(word: str) -> str:
    # Plurals, -ing/-ed and a final e only: enough for weights/weight, prune/pruned/pruning and
    # quantize/quantized; dense search covers the rest of the morphology.
    if len(word) <= 4 or not word.isalpha():
        return word
    if word.endswith("ies"):
        word = word[:-3] + "y"
    elif word.endswith("s") and not word.endswith(("ss", "us", "is", "as")):
        word = word[:-1]
    elif word.endswith("ing") and len(word) > 6:
        word = word[:-3]
    elif word.endswith("ed") and len(word) > 5:
        word = word[:-2]
    return word[:-1] if word.endswith("e") and len(word) > 4 else word


def keyword_tokens(text: str) -> list[str]:
    """Lower-case word tokens; "kv-cache" also yields "kvcache", "2:4" also "2_4"-style joins."""
    text = unicodedata.normalize("NFKC", text).casefold()
    joined = [m.group(0) for m in _HYPHENATED.finditer(text)]
    words = _TOKEN.findall(text) + [re.sub(r"[-:/]", "", w) for w in joined]
    return [_stem(w) for w in words if w not in _STOPWORDS]


def keyword_text(r: Record, title_repeat: int) -> str:
    s = r.summary
    head = " ".join([r.title, " ".join(r.tags), r.id]) + " "
    return " ".join([head * title_repeat, " ".join(r.authors), " ".join(r.themes), r.taxonomy,
                     r.venue or "", s.problem, s.method, s.results, s.limitations])


# -- the searcher -------------------------------------------------------------------------------------

@dataclass
class Searcher:
    records: Sequence[Record]
    cache_dir: Path | None = DEFAULT_CACHE
    progress: bool = True
    log: Callable[[str], None] = lambda message: None
    config: SearchConfig = field(default_factory=SearchConfig)
    dense: DenseIndex | None = None  # given directly by benchmarks (synthetic vectors)
    encoder: object | None = None  # anything with encode(text) -> unit vector

    def __post_init__(self) -> None:
        self.records = list(self.records)
        self.position = {r.id: i for i, r in enumerate(self.records)}
        self._faiss = None
        self._bm25 = None
        self._blas = None
        self._columns = None
        self._checked = False
        self._pooled = None

    # -- lazy parts: nothing heavy happens until a query needs it --
    def dense_index(self) -> DenseIndex:
        if not self._checked:
            if self.dense is None:
                self.dense = load_or_build(self.records, self.cache_dir, progress=self.progress, log=self.log)
            if self.dense.ids != [r.id for r in self.records]:
                raise ValueError("the dense index does not belong to these records")
            self._checked = True
        return self.dense

    def record_vectors(self) -> np.ndarray:
        """(n, dim) unit vectors: the records' fields pooled as configured (weighted mean)."""
        if self._pooled is None:
            fields = self.dense_index().fields  # (n, F, dim)
            w = np.asarray(self.config.field_weights, dtype=np.float32)[None, :, None]
            pooled = (fields * w).sum(1)  # (n, dim)
            self._pooled = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return self._pooled

    def _faiss_index(self):
        if self._faiss is None:
            import faiss

            rows = (self.dense_index().fields.reshape(-1, self.dense_index().fields.shape[2])
                    if self.config.pooling == "max" else self.record_vectors())
            self._faiss = faiss.IndexFlatIP(rows.shape[1])  # exact: flat measured fast enough at 100k
            self._faiss.add(np.ascontiguousarray(rows, dtype=np.float32))
        return self._faiss

    def _bm25_index(self):
        if self._bm25 is None:
            import bm25s

            self._bm25 = bm25s.BM25()
            corpus = [keyword_tokens(keyword_text(r, self.config.title_repeat)) or [""] for r in self.records]
            self._bm25.index(corpus, show_progress=False)
        return self._bm25

    def _encode(self, text: str) -> np.ndarray:
        if self.encoder is None:
            self.encoder = QueryEncoder()
        if self._blas is None:
            from threadpoolctl import ThreadpoolController  # local: only queries that embed need it

            self._blas = ThreadpoolController()
        with self._blas.limit(limits=1, user_api="blas"):  # one thread: tiny matrices, shared cores
            return self.encoder.encode(text)

    # -- ranking --
    def _allowed(self, filters: Filters | None) -> np.ndarray | None:
        """Boolean mask of the records a filter keeps; the same answer as Filters.accepts, vectorized."""
        if filters is None or not filters.active():
            return None
        if self._columns is None:
            self._columns = _Columns.of(self.records)
        return self._columns.mask(filters)

    def _depth(self, top_k: int) -> int:
        return len(self.records) if len(self.records) <= EXACT_LIMIT else max(200, 10 * top_k)

    def dense_ranking(self, vector: np.ndarray, allowed: np.ndarray | None,
                      depth: int) -> list[tuple[int, float]]:
        import faiss

        index = self._faiss_index()
        per_record = len(FIELDS) if self.config.pooling == "max" else 1
        params, n_allowed = None, len(self.records)
        if allowed is not None:
            n_allowed = int(allowed.sum())
            if n_allowed == 0:
                return []
            rows = np.repeat(allowed, per_record)
            bitmap = np.packbits(rows, bitorder="little")
            params = faiss.SearchParameters(sel=faiss.IDSelectorBitmap(len(rows), faiss.swig_ptr(bitmap)))
        k = min(depth, n_allowed) * per_record
        threads = faiss.omp_get_max_threads()
        # one query: more threads only contend (100k flat: 36 ms with 2, 10 ms with 1)
        faiss.omp_set_num_threads(1)
        try:
            scores, rows_found = index.search(vector[None, :].astype(np.float32), k, params=params)
        finally:
            faiss.omp_set_num_threads(threads)
        ranking: dict[int, float] = {}
        for row, score in zip(rows_found[0], scores[0], strict=True):
            if row >= 0:
                ranking.setdefault(int(row) // per_record, float(score))  # sorted: the first is the max
        return list(ranking.items())[:depth]

    def bm25_ranking(self, tokens: list[str], allowed: np.ndarray | None,
                     depth: int) -> list[tuple[int, float]]:
        bm25 = self._bm25_index()
        ids = bm25.get_tokens_ids(tokens)
        if not ids:
            return []
        scores = bm25.get_scores_from_ids(ids)
        if allowed is not None:
            scores = np.where(allowed, scores, 0.0)
        candidates = np.flatnonzero(scores > 0)
        if len(candidates) > depth:
            candidates = candidates[np.argpartition(-scores[candidates], depth - 1)[:depth]]
        order = candidates[np.argsort(-scores[candidates], kind="stable")]
        return [(int(i), float(scores[i])) for i in order]

    def fuse(self, dense: list[tuple[int, float]], bm25: list[tuple[int, float]]) -> list[tuple[int, float]]:
        c = self.config
        fused: dict[int, float] = {}
        if c.fusion == "rrf":
            for weight, ranking in ((c.dense_weight, dense), (1.0, bm25)):
                for rank, (i, _) in enumerate(ranking, start=1):
                    fused[i] = fused.get(i, 0.0) + weight / (c.rrf_k + rank)
        else:  # "score": max-normalized, "minmax": min-max normalized scores, weighted sum
            for weight, ranking in ((c.dense_weight, dense), (1.0, bm25)):
                if not ranking:
                    continue
                top = max(s for _, s in ranking)
                low = min(s for _, s in ranking) if c.fusion == "minmax" else 0.0
                span = top - low
                for i, s in ranking:
                    fused[i] = fused.get(i, 0.0) + weight * ((s - low) / span if span > 0 else 1.0)
        return sorted(fused.items(), key=lambda item: -item[1])

    # -- public API --
    def search(self, query: str, top_k: int = 10, mode: str = DEFAULT_MODE,
               filters: Filters | None = None) -> list[Hit]:
        """The top_k records for a free-text query, best first."""
        query = clean_query(query)
        check_top(top_k)
        if mode not in MODES:
            raise QueryError(f"unknown mode '{mode}'{suggest(mode, MODES)} (choose {', '.join(MODES)})")
        if filters is not None:
            filters.check()
        if not self.records:
            return []  # an empty catalog: nothing to rank (bm25s and faiss need at least one document)
        allowed = self._allowed(filters)
        depth = self._depth(top_k)
        dense = self.dense_ranking(self._encode(query), allowed, depth) if mode != "bm25" else []
        keyword = self.bm25_ranking(keyword_tokens(query), allowed, depth) if mode != "dense" else []
        ranking = dense if mode == "dense" else keyword if mode == "bm25" else self.fuse(dense, keyword)
        return [Hit(self.records[i], score) for i, score in ranking[:top_k]]

    def similar(self, record_id: str, top_k: int = 10, filters: Filters | None = None) -> list[Hit]:
        """The records closest in meaning to one record (itself excluded)."""
        check_top(top_k)
        if record_id not in self.position:
            raise QueryError(f"no record '{record_id}'{suggest(record_id, self.position)}")
        if filters is not None:
            filters.check()
        allowed = self._allowed(filters)
        allowed = np.ones(len(self.records), dtype=bool) if allowed is None else allowed.copy()
        me = self.position[record_id]
        allowed[me] = False
        depth = self._depth(top_k)
        r = self.records[me]
        # Meaning (the pooled vector) fused with shared vocabulary (title, tags, taxonomy): measured
        # against the curated `related` links, recall@10 0.66 dense-only, 0.77 fused.
        dense = self.dense_ranking(self.record_vectors()[me], allowed, depth)
        shared_words = keyword_tokens(" ".join([r.title, " ".join(r.tags), r.taxonomy]))
        keyword = self.bm25_ranking(shared_words, allowed, depth)
        ranking = self.fuse(dense, keyword)
        return [Hit(self.records[i], score) for i, score in ranking[:top_k]]

    def notes(self, query: str) -> list[str]:
        """What the user should know about how a query was read (printed on stderr by the CLI)."""
        if len(query) <= LONG_QUERY_CHARS:
            return []
        if self.encoder is None:
            self.encoder = QueryEncoder()
        n = self.encoder.token_count(query)
        if n <= MAX_TOKENS:
            return []
        return [f"the query has {n} word pieces; the semantic part reads the first {MAX_TOKENS} "
                "(the model's limit), the keyword part reads all of it"]


def clean_query(query: str) -> str:
    # Control characters (a pasted PDF, a terminal escape) carry no meaning and confuse the tokenizer.
    query = "".join(" " if unicodedata.category(ch).startswith("C") else ch for ch in query)
    query = " ".join(query.split())
    if not query:
        raise QueryError('the query is empty; search by idea ("prune without retraining") '
                         'or keyword ("kv cache 2-bit")')
    return query


def check_top(top_k: int) -> None:
    if top_k < 1:
        raise QueryError(f"--top must be at least 1 (got {top_k})")
