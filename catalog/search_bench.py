"""`atlas bench search`: search quality on catalog/data/search_eval.jsonl, latency, index build time.

Quality: recall@10 (hits over min(|relevant|, 10), so broad questions with many relevant papers are
not capped below 1), MRR@10 and nDCG@10 (gain 2^grade - 1) for each mode, on the tuning part and on
the held-aside part separately; ablations (pooling, field weights, fusion, BM25 field boost) on the
tuning part only, since that is the part choices were made on. `similar` is scored against the
curators' `related` links. Latency: warm queries on the catalog and on 100,000 synthetic records,
the index build on this machine, and a cold `atlas search` in a fresh process.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from catalog.index import FIELDS, DenseIndex, QueryEncoder, embed_texts, field_texts, load_or_build
from catalog.load import CatalogInvalid, load_catalog, load_records
from catalog.schema import Record
from catalog.search import DEFAULT_MODE, MODES, Hit, SearchConfig, Searcher

EVAL_FILE = Path(__file__).resolve().parent / "data" / "search_eval.jsonl"  # package data
RESULTS = Path("results") / "search.json"
K = 10


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def load_eval(path: Path = EVAL_FILE) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [row for row in rows if "_comment" not in row]


# -- metrics ------------------------------------------------------------------------------------------

def recall_at(ranked: list[str], relevant: dict[str, int], k: int = K) -> float:
    return len(set(ranked[:k]) & set(relevant)) / min(len(relevant), k)


def mrr_at(ranked: list[str], relevant: dict[str, int], k: int = K) -> float:
    return next((1.0 / rank for rank, rid in enumerate(ranked[:k], start=1) if rid in relevant), 0.0)


def ndcg_at(ranked: list[str], relevant: dict[str, int], k: int = K) -> float:
    dcg = sum((2 ** relevant.get(rid, 0) - 1) / math.log2(rank + 1)
              for rank, rid in enumerate(ranked[:k], start=1))
    ideal = sorted(relevant.values(), reverse=True)[:k]
    idcg = sum((2 ** g - 1) / math.log2(rank + 1) for rank, g in enumerate(ideal, start=1))
    return dcg / idcg


def score(searcher: Searcher, queries: list[dict], mode: str) -> dict:
    per_query = []
    for q in queries:
        ranked = [h.record.id for h in searcher.search(q["query"], K, mode)]
        relevant = q["relevant"]
        per_query.append((recall_at(ranked, relevant), mrr_at(ranked, relevant), ndcg_at(ranked, relevant)))
    r, m, n = (float(np.mean(col)) for col in zip(*per_query, strict=True)) if per_query else (0.0, 0.0, 0.0)
    return {"recall@10": round(r, 4), "mrr@10": round(m, 4), "ndcg@10": round(n, 4), "queries": len(queries)}


def similar_score(searcher: Searcher) -> dict:
    """Recall@10 of `similar` against each record's curated `related` list."""
    known = set(searcher.position)
    recalls = []
    for r in searcher.records:
        related = {rid: 1 for rid in r.related if rid in known}
        if related:
            recalls.append(recall_at([h.record.id for h in searcher.similar(r.id, K)], related))
    recall = round(float(np.mean(recalls)), 4) if recalls else None
    return {"recall@10_of_related": recall, "records": len(recalls)}


class DenseOnlySimilar:
    """`similar` without the keyword side, for the ablation."""

    def __init__(self, searcher: Searcher):
        self.searcher, self.records, self.position = searcher, searcher.records, searcher.position

    def similar(self, record_id: str, top_k: int):
        s = self.searcher
        me = s.position[record_id]
        allowed = np.ones(len(s.records), dtype=bool)
        allowed[me] = False
        ranking = s.dense_ranking(s.record_vectors()[me], allowed, len(s.records))
        return [Hit(s.records[i], score) for i, score in ranking[:top_k]]


class MemoEncoder:
    """The NumPy encoder with a memo, so every configuration sees identical query vectors."""

    def __init__(self):
        self.encoder = QueryEncoder()
        self.memo: dict[str, np.ndarray] = {}

    def encode(self, text: str) -> np.ndarray:
        if text not in self.memo:
            self.memo[text] = self.encoder.encode(text)
        return self.memo[text]


# -- the parts of the report --------------------------------------------------------------------------

def usable_queries(queries: list[dict], ids: set[str]) -> list[dict]:
    """Queries restricted to judged ids that exist in this catalog (a copy of the catalog may lack some)."""
    kept = []
    for q in queries:
        relevant = {rid: g for rid, g in q["relevant"].items() if rid in ids}
        if relevant:
            kept.append({**q, "relevant": relevant})
    return kept


def quality(records: list[Record], dense: DenseIndex, concat: DenseIndex, queries: list[dict]) -> dict:
    encoder = MemoEncoder()
    tune = [q for q in queries if q["split"] == "tune"]
    held = [q for q in queries if q["split"] == "held"]

    def searcher(config=SearchConfig(), index=dense):
        return Searcher(records, cache_dir=None, config=config, dense=index, encoder=encoder)

    chosen = searcher()
    report = {"config": dataclasses.asdict(SearchConfig()), "default_mode": DEFAULT_MODE, "modes": {}}
    for mode in MODES:
        report["modes"][mode] = {"tune": score(chosen, tune, mode), "held": score(chosen, held, mode)}
        for kind in ("paraphrase", "keyword", "broad"):
            of_kind = [q for q in tune if q["type"] == kind]
            report["modes"][mode][f"tune:{kind}"] = score(chosen, of_kind, mode)
    base = SearchConfig()
    variant = functools.partial(dataclasses.replace, base)
    variants = {
        "one text, truncated at 256 tokens": (base, concat),
        "fields, mean pooling (equal weights)": (variant(field_weights=(1.0,) * len(FIELDS)), dense),
        "fields, mean pooling (head x2) [default]": (base, dense),
        "fields, mean pooling (head x4)": (variant(field_weights=(4.0, 1.0, 1.0, 1.0, 1.0)), dense),
        "fields, max over fields": (variant(pooling="max"), dense),
        "head field only (title, themes, tags)": (variant(field_weights=(1.0, 0, 0, 0, 0)), dense),
    }
    report["pooling_ablation_tune"] = {name: {m: score(searcher(c, i), tune, m) for m in ("dense", "hybrid")}
                                       for name, (c, i) in variants.items()}
    fusions = {
        "score fusion, max-normalized, bm25 title/tags x1 [default]": base,
        "score fusion, dense x0.5": dataclasses.replace(base, dense_weight=0.5),
        "score fusion, dense x1.25": dataclasses.replace(base, dense_weight=1.25),
        "score fusion, min-max normalized": dataclasses.replace(base, fusion="minmax"),
        "reciprocal-rank fusion k=60": dataclasses.replace(base, fusion="rrf"),
        "reciprocal-rank fusion k=20": dataclasses.replace(base, fusion="rrf", rrf_k=20.0),
        "bm25 title/tags x2": dataclasses.replace(base, title_repeat=2),
        "bm25 title/tags x3": dataclasses.replace(base, title_repeat=3),
    }
    report["fusion_ablation_tune"] = {name: score(searcher(c), tune, "hybrid") for name, c in fusions.items()}
    report["similar"] = {"pooled vector + bm25 of title/tags/taxonomy [default]": similar_score(chosen),
                         "dense only (pooled vector)": similar_score(DenseOnlySimilar(chosen)),
                         "dense only, one truncated text":
                             similar_score(DenseOnlySimilar(searcher(base, concat)))}
    return report


def concat_index(records: list[Record]) -> DenseIndex:
    """The baseline: one text per record (title, tags, all summary fields), cut at 256 tokens."""
    texts = [" ".join(field_texts(r)) for r in records]
    vectors = embed_texts(texts)
    fields = np.repeat(vectors[:, None, :], len(FIELDS), axis=1)  # mean of identical rows = the vector
    return DenseIndex(ids=[r.id for r in records], fields=fields, key="concat")


def latency(searcher: Searcher, queries: list[str], repeat: int = 3) -> dict:
    out = {}
    for mode in MODES:
        searcher.search(queries[0], K, mode)  # warm: model, indexes
        times = []
        for _ in range(repeat):
            for q in queries:
                t = time.perf_counter()
                searcher.search(q, K, mode)
                times.append((time.perf_counter() - t) * 1000)
        out[mode] = {"p50_ms": round(float(np.percentile(times, 50)), 2),
                     "p95_ms": round(float(np.percentile(times, 95)), 2), "n": len(times)}
    return out


def synthetic(records: list[Record], dense: DenseIndex, n: int,
              seed: int = 0) -> tuple[list[Record], DenseIndex]:
    """n records mixing real records' words; vectors = a real record's vectors plus noise.

    Embedding 100,000 texts is out of reach on 2 cores, so vectors are perturbed copies of real
    ones (clustered like real data); BM25 texts are shuffled real words.
    """
    rng = np.random.default_rng(seed)
    base = rng.integers(0, len(records), size=n)
    words = [f"{r.title} {r.summary_text}".split() for r in records]
    out = []
    for i, b in enumerate(base):
        r = records[b]
        mixed = list(words[b]) + list(words[rng.integers(len(records))])
        rng.shuffle(mixed)
        text = " ".join(mixed[:120])
        summary = r.summary.model_construct(problem=text[:300], method=text[300:700], results=text[700:900],
                                            limitations=text[900:] or "none")
        out.append(r.model_construct(**{**dict(r), "id": f"syn-{i}", "summary": summary, "related": []}))
    noise = rng.normal(0, 0.03, size=(n, len(FIELDS), dense.fields.shape[2])).astype(np.float32)
    fields = dense.fields[base] + noise
    fields /= np.linalg.norm(fields, axis=2, keepdims=True)
    return out, DenseIndex(ids=[r.id for r in out], fields=fields.astype(np.float32), key="synthetic")


def hnsw_vs_flat(vectors: np.ndarray, queries: np.ndarray) -> dict:
    """Flat (exact) against HNSW on the same vectors: latency and recall@10 of HNSW."""
    import faiss

    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(vectors)
    t = time.perf_counter()
    hnsw = faiss.IndexHNSWFlat(vectors.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
    hnsw.add(vectors)
    build_s = time.perf_counter() - t
    out = {"hnsw_build_s": round(build_s, 1)}
    _, exact = flat.search(queries, K)
    faiss.omp_set_num_threads(1)  # as Searcher does for one query
    for name, index, ef in (("flat", flat, 0), ("hnsw_m32_ef64", hnsw, 64), ("hnsw_m32_ef256", hnsw, 256)):
        if ef:
            index.hnsw.efSearch = ef
        times = []
        for q in queries:
            t = time.perf_counter()
            index.search(q[None], K)
            times.append((time.perf_counter() - t) * 1000)
        _, found = index.search(queries, K)
        agree = np.mean([len(set(a) & set(b)) / K for a, b in zip(found, exact, strict=True)])
        out[name] = {"p50_ms": round(float(np.percentile(times, 50)), 2),
                     "p95_ms": round(float(np.percentile(times, 95)), 2),
                     "recall@10_vs_exact": round(float(agree), 4)}
    return out


COLD_PHASES = """
import json, sys, time
from pathlib import Path
t = [time.perf_counter()]
import catalog.cli  # noqa: F401  what every atlas command imports
t.append(time.perf_counter())
from catalog.load import load_records
records = load_records(Path(sys.argv[1]))
t.append(time.perf_counter())
from catalog.search import Searcher
s = Searcher(records, cache_dir=Path(sys.argv[2]), progress=False)
s.dense_index()
t.append(time.perf_counter())
from catalog.index import QueryEncoder
s.encoder = QueryEncoder()
t.append(time.perf_counter())
s.search("prune without retraining using activations")
t.append(time.perf_counter())
names = ["import_cli", "load_records", "read_index", "load_query_encoder", "first_search"]
print(json.dumps({n: round(b - a, 3) for n, a, b in zip(names, t, t[1:])} | {"embedded": s.dense.embedded}))
"""


def cold_cli(papers: Path, cache: Path, runs: int = 3) -> dict:
    """Wall time of `atlas search` in a fresh process with the index built, and where it goes."""
    atlas = shutil.which("atlas") or str(Path(sys.executable).with_name("atlas"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    args = ["--papers", str(papers), "--cache-dir", str(cache)]
    times, embedding_runs = [], 0
    for _ in range(runs):
        # Records may be edited while this runs (the catalog is shared): bring the index up to date
        # first, so that a run times a cold start and not an embedding run; runs that still had to
        # embed are counted and left out of the median.
        subprocess.run([atlas, "index", *args], capture_output=True, env=env, check=False)
        query = "prune without retraining using activations"
        t = time.perf_counter()
        proc = subprocess.run([atlas, "search", query, "--json", *args],
                              capture_output=True, env=env, check=False)
        elapsed = time.perf_counter() - t
        if proc.returncode != 0:
            return {"error": proc.stderr.decode()[-500:]}
        if b"embedded" in proc.stderr:
            embedding_runs += 1
        else:
            times.append(elapsed)
    phases = subprocess.run([sys.executable, "-c", COLD_PHASES, str(papers), str(cache)], capture_output=True,
                            env=env, check=False, text=True)
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import sentence_transformers"], check=True, env=env)
    st_import_s = time.perf_counter() - t
    return {"atlas_search_s_median": round(float(np.median(times)), 2) if times else None,
            "runs": [round(x, 2) for x in times], "runs_left_out_for_embedding": embedding_runs,
            "phases_s": json.loads(phases.stdout) if phases.returncode == 0 else phases.stderr[-300:],
            "sentence_transformers_import_s": round(st_import_s, 2)}


def catalog_records(papers: Path) -> tuple[list[Record], int]:
    try:
        return load_records(papers), 0
    except CatalogInvalid as exc:
        # While the catalog is being filled, dangling `related` links must not stop the benchmark.
        records = load_catalog(papers, checks=False).records
        say(f"warning: the catalog has {len(exc.errors)} error(s); "
            f"benchmarking its {len(records)} parseable records")
        return records, len(exc.errors)


def run_bench(papers_dir: Path, synthetic_n: int = 100_000) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="atlas-bench-") as tmp:
        # A snapshot: records edited while the benchmark runs would otherwise turn timed cold starts
        # into embedding runs.
        papers_dir = Path(shutil.copytree(papers_dir, Path(tmp) / "papers"))
        records, catalog_errors = catalog_records(papers_dir)
        result = {"records": len(records), "catalog_errors": catalog_errors,
                  "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                              "python": platform.python_version(),
                              "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}}
        cache = Path(tmp) / "cache"
        say(f"building the index of {len(records)} records from scratch ...")
        t = time.perf_counter()
        dense = load_or_build(records, cache, progress=True)
        build_s = time.perf_counter() - t
        t = time.perf_counter()
        again = load_or_build(records, cache, progress=False)
        result["index"] = {"build_s": round(build_s, 1), "texts_embedded": dense.embedded,
                           "fresh_reload_s": round(time.perf_counter() - t, 3),
                           "fresh_reload_texts_embedded": again.embedded}
        say("embedding the one-text baseline ...")
        concat = concat_index(records)
        queries = usable_queries(load_eval(), {r.id for r in records})
        say(f"scoring {len(queries)} queries ...")
        result["quality"] = quality(records, dense, concat, queries)
        searcher = Searcher(records, cache_dir=None, dense=dense)
        result["latency_catalog"] = latency(searcher, [q["query"] for q in queries])
        say("cold CLI runs ...")
        result["cold_cli"] = cold_cli(Path(papers_dir), cache)
        say(f"{synthetic_n} synthetic records ...")
        syn_records, syn_dense = synthetic(records, dense, synthetic_n)
        t = time.perf_counter()
        big = Searcher(syn_records, cache_dir=None, dense=syn_dense, encoder=searcher.encoder)
        big.search("warm up", K, "hybrid")
        result["latency_synthetic"] = {"records": synthetic_n, "setup_s": round(time.perf_counter() - t, 1),
                                       **latency(big, [q["query"] for q in queries], repeat=1)}
        qvecs = np.stack([searcher.encoder.encode(q["query"]) for q in queries])
        result["latency_synthetic"]["faiss"] = hnsw_vs_flat(big.record_vectors(), qvecs)
    result["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = RESULTS.with_name(RESULTS.name + ".tmp")
    tmp_out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    tmp_out.replace(RESULTS)
    print_report(result)
    return result


def print_report(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True)
    q = result["quality"]
    table = Table(title=f"search quality ({result['records']} records; default mode: {q['default_mode']})")
    for col in ("mode", "part", "queries", "recall@10", "MRR@10", "nDCG@10"):
        table.add_column(col)
    for mode, parts in q["modes"].items():
        for part in ("tune", "held"):
            s = parts[part]
            table.add_row(mode, part, str(s["queries"]),
                          f"{s['recall@10']:.3f}", f"{s['mrr@10']:.3f}", f"{s['ndcg@10']:.3f}")
    console.print(table)
    lat = result["latency_catalog"]
    syn = result["latency_synthetic"]
    catalog_ms = ", ".join(f"{m} {v['p50_ms']}/{v['p95_ms']}" for m, v in lat.items())
    synthetic_ms = ", ".join(f"{m} {syn[m]['p50_ms']}/{syn[m]['p95_ms']}" for m in MODES)
    console.print(f"warm latency p50/p95 ms: catalog {catalog_ms}; {syn['records']} synthetic {synthetic_ms}")
    index = result["index"]
    console.print(f"index build {index['build_s']} s ({index['texts_embedded']} texts); "
                  f"unchanged rebuild {index['fresh_reload_s']} s, "
                  f"{index['fresh_reload_texts_embedded']} texts embedded; "
                  f"cold CLI {result['cold_cli']}")
    console.print(f"wrote {RESULTS}")
