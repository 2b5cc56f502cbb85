"""The real catalog as data: it validates, covers the landmarks, every theme and every taxonomy leaf."""

from collections import Counter
from pathlib import Path

import pytest

from catalog.load import load_catalog
from catalog.vocabulary import vocabulary

PAPERS = Path(__file__).resolve().parents[1] / "papers"
LANDMARKS = """gptq awq smoothquant llm-int8 spqr quip quip-sharp omniquant zeroquant squeezellm qlora
llm-qat peqa lut-gemm obc aqlm quarot spinquant kivi kvquant flexgen sparsegpt wanda llm-pruner slicegpt
sheared-llama shortgpt flap owl dsnot ria besa minitron flash-llm ziplm minillm gkd distilling-step-by-step
distilbert tinybert minilm lion tensorgpt asvd svd-llm losparse lora bitnet bitnet-b158 hqq
outlier-suppression llm-kick llm-compression-survey h2o streamingllm medusa deja-vu atom qserve fp8-formats
mx-formats""".split()
MAIN_THEMES = "quantization pruning distillation low-rank memory prompt finetuning benchmarks compression"
MIN_PER_THEME = {t: 8 for t in MAIN_THEMES.split()}
MIN_PER_THEME |= {t: 4 for t in "encoding hyperparameters open-source-models agents".split()}


@pytest.fixture(scope="module")
def catalog():
    return load_catalog(PAPERS, coverage=True)


def test_catalog_validates_with_coverage(catalog):
    assert not catalog.errors, "\n".join(map(str, catalog.errors[:30]))


def test_at_least_250_records(catalog):
    assert len(catalog.records) >= 250


def test_every_landmark_is_present(catalog):
    ids = {r.id for r in catalog.records}
    assert not [x for x in LANDMARKS if x not in ids]


def test_theme_coverage(catalog):
    counts = Counter(t for r in catalog.records for t in r.themes)
    short = {t: (counts[t], n) for t, n in MIN_PER_THEME.items() if counts[t] < n}
    assert not short, short
    assert set(MIN_PER_THEME) == set(vocabulary().themes)


def test_every_taxonomy_leaf_has_papers(catalog):
    used = Counter(r.taxonomy for r in catalog.records)
    assert not [leaf for leaf in vocabulary().taxonomy if used[leaf] == 0]


def test_related_links_resolve_and_point_to_other_records(catalog):
    ids = {r.id for r in catalog.records}
    for r in catalog.records:
        assert set(r.related) <= ids and r.id not in r.related


def test_landmark_facts_match_the_verified_table(catalog):
    by_id = catalog.by_id()
    facts = {"gptq": ("2210.17323", "ICLR 2023"), "awq": ("2306.00978", "MLSys 2024"),
             "sparsegpt": ("2301.00774", "ICML 2023"), "wanda": ("2306.11695", "ICLR 2024"),
             "llm-compression-survey": ("2308.07633", None), "hqq": (None, None)}
    for rid, (arxiv, venue) in facts.items():
        assert by_id[rid].arxiv == arxiv, rid
        if venue:
            assert by_id[rid].venue == venue, rid
