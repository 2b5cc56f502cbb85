"""Similar papers are computed once per catalog content, then read from the cache."""

import sys
import types

from catalog.load import load_records
from catalog.site_data import load_results, similar_papers
from tests.catalog_fixtures import two_good


class CountingSearcher:
    instances = 0

    def __init__(self, records, cache_dir=None, progress=True):
        CountingSearcher.instances += 1
        self.ids = [r.id for r in records]

    def similar(self, record_id, top_k=5):
        others = [i for i in self.ids if i != record_id][:top_k]
        return [types.SimpleNamespace(record=types.SimpleNamespace(id=i)) for i in others]


def test_similar_is_not_recomputed_when_nothing_changed(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "catalog.search", types.SimpleNamespace(Searcher=CountingSearcher))
    CountingSearcher.instances = 0
    papers = two_good(tmp_path / "papers")
    records = load_records(papers)
    first = similar_papers(records, tmp_path / "cache")
    second = similar_papers(load_records(papers), tmp_path / "cache")
    assert first == second == {"alpha": ["beta"], "beta": ["alpha"]}
    assert CountingSearcher.instances == 1
    beta = papers / "beta.yaml"
    beta.write_text(beta.read_text().replace("A test paper", "A changed paper"))
    similar_papers(load_records(papers), tmp_path / "cache")
    assert CountingSearcher.instances == 2


def test_load_results_accepts_records_and_lists(tmp_path):
    (tmp_path / "a.json").write_text('{"method": "rtn", "metrics": {"perplexity": 3.0}}')
    (tmp_path / "b.json").write_text('[{"method": "gptq", "metrics": {}}, {"nope": 1}]')
    (tmp_path / "c.json").write_text("{broken")
    assert sorted(load_results(tmp_path)) == ["gptq", "rtn"]


def test_paper_page_states_what_a_simplified_implementation_leaves_out():
    from pathlib import Path

    from catalog.site import SiteData, implementation_section
    from catalog.site_data import implementations

    record = next(r for r in load_records(Path("papers")) if r.id == "essential-sparsity")
    impls = implementations([record])
    info = impls["reference_impls.pruning.magnitude"]
    assert info["name"] == "magnitude" and "left out" in info["doc"]
    page = "\n".join(implementation_section(record, SiteData(records=[record], impls=impls)))
    assert "fidelity **simplified**" in page
    assert '!!! note "What the implementation covers' in page  # open, not collapsed, when not exact
    assert "downstream finetuning of the pruned checkpoints" in page


def test_results_table_shows_one_setting_cell_with_the_options_that_vary():
    from catalog.site import results_table

    base = {"method": "rtn", "model": "causal", "bits_per_weight": 4.156, "time_s": 0.1}
    rows = [dict(base, options={"bits": 4, "group_size": 128},
                 metrics={"perplexity": 46.17, "perplexity_fp": 45.362}),
            dict(base, options={"bits": 3, "group_size": 128},
                 metrics={"perplexity": 48.478, "perplexity_fp": 45.362})]
    table = results_table(rows)
    assert table[0] == "| model | setting | metric | full precision | bits/weight | time (s) |"
    assert any("bits=3" in line and r"perplexity 48\.478" in line and r"45\.362" in line for line in table)
    # every row names the actual value of what varies; what is constant is stated once under the table
    assert any("| bits=4 |" in line and r"perplexity 46\.170" in line for line in table)
    assert not any("common setting" in line.lower() for line in table)
    assert not any("group" in line for line in table[2:4])
    assert r"Every row: group\_size=128\." in table


def test_implementations_name_the_registered_method_of_each_linked_module():
    import inspect
    import sys
    from pathlib import Path

    from catalog.site_data import implementations
    from reference_impls.common import registry

    records = [r for r in load_records(Path("papers")) if r.runnable]
    impls = implementations(records)
    assert set(impls) == {r.impl.module for r in records}  # every linked module registers a method
    for module, info in impls.items():
        assert registry.get(info["name"]).module == module
        assert info["doc"] == inspect.getdoc(sys.modules[module])


def test_registry_index_is_cached_until_a_reference_impls_source_changes(tmp_path, monkeypatch):
    import catalog.site_data as site_data

    fresh = site_data.registry_index()
    calls = []
    monkeypatch.setattr(site_data, "registry_index", lambda: calls.append(1) or fresh)
    monkeypatch.setattr(site_data, "impl_sources_hash", lambda: "sources-a")
    assert site_data.cached_registry_index(tmp_path) == fresh and len(calls) == 1
    assert site_data.cached_registry_index(tmp_path) == fresh and len(calls) == 1  # read from the cache
    monkeypatch.setattr(site_data, "impl_sources_hash", lambda: "sources-b")
    assert site_data.cached_registry_index(tmp_path) == fresh and len(calls) == 2
    assert [p.name for p in tmp_path.glob("impls-*.json")] == ["impls-sources-b.json"]


def test_sources_hash_follows_every_edit(tmp_path):
    from catalog.site_data import sources_hash

    (tmp_path / "family").mkdir()
    method = tmp_path / "family" / "method.py"
    method.write_text('@register("a")\n')
    first = sources_hash([tmp_path])
    assert sources_hash([tmp_path]) == first
    method.write_text('@register("b")\n')
    edited = sources_hash([tmp_path])
    (tmp_path / "family" / "other.py").write_text("")
    assert len({first, edited, sources_hash([tmp_path])}) == 3
