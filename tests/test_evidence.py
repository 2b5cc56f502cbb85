"""Evidence side files (evidence/<id>.yaml): quoted claims, listed sources, the abstract-copy check."""

from catalog.evidence import check_evidence, copied_run, load_evidence
from catalog.load import load_catalog
from tests.catalog_fixtures import record_text, write_catalog


def _setup(tmp_path, evidence: str, *, sources: str = "sources: [https://arxiv.org/abs/2210.17323]\n"):
    papers = write_catalog(tmp_path / "papers", {"alpha": record_text("alpha", extra=sources)})
    (tmp_path / "evidence").mkdir()
    (tmp_path / "evidence" / "alpha.yaml").write_text(evidence, encoding="utf-8")
    catalog = load_catalog(papers, checks=False)
    return {r.id: r for r in catalog.records}, papers


def _evidence(source="https://arxiv.org/abs/2210.17323", abstract="Something else entirely here."):
    return (f"id: alpha\nabstract: {abstract}\nchecks:\n  - checker: test\n    date: 2026-12-03\n"
            f"    claims:\n      - claim: four bits\n        quote: \"keeps perplexity close at 4 bits\"\n"
            f"        source: {source}\n")


def test_copied_run_finds_ten_shared_words_and_no_fewer():
    text = "one two three four five six seven eight nine ten eleven"
    ten = "one two three four five six seven eight nine ten"
    assert copied_run("zero " + text, "x " + text + " y") == ten
    assert copied_run("one two three four five six seven eight nine", text) is None  # 9 words is allowed
    assert copied_run("One, two; three four five six seven eight nine ten", text.upper()) is not None


def test_clean_evidence_passes_and_loads(tmp_path):
    records, papers = _setup(tmp_path, _evidence())
    assert check_evidence(records, papers) == []
    found, errors = load_evidence(papers)
    assert errors == [] and found["alpha"].checks[0].claims[0].claim == "four bits"


def test_a_quote_from_an_unlisted_source_is_reported(tmp_path):
    records, papers = _setup(tmp_path, _evidence(source="https://example.org/blog"))
    (err,) = check_evidence(records, papers)
    assert err.path.endswith("evidence/alpha.yaml")
    assert "https://example.org/blog is not in the record's" in str(err)


def test_a_summary_copying_the_abstract_is_reported_with_the_field(tmp_path):
    # the fixture's results sentence shares ten words with this abstract
    abstract = "the method keeps perplexity close to the full-precision model at four bits, where others fail"
    records, papers = _setup(tmp_path, _evidence(abstract=abstract))
    (err,) = check_evidence(records, papers)
    assert err.field == "summary.results" and "copies 10 words of the abstract" in err.message


def test_bad_files_give_one_line_each(tmp_path):
    records, papers = _setup(tmp_path, "id: alpha\nchecks: [\n")
    (tmp_path / "evidence" / "ghost.yaml").write_text(_evidence().replace("id: alpha", "id: ghost"))
    (tmp_path / "evidence" / "beta.yaml").write_text(_evidence())  # id differs from the file name
    errors = check_evidence(records, papers)
    text = "\n".join(str(e) for e in errors)
    assert len(errors) == 3 and "\n" not in str(errors[0])
    assert "alpha.yaml" in text and "no record papers/ghost.yaml" in text
    assert "differs from the file name" in text


def test_paper_page_lists_sources_and_the_quoted_claims(tmp_path):
    from catalog.site import SiteData, paper_page

    records, papers = _setup(tmp_path, _evidence())
    found, _ = load_evidence(papers)
    data = SiteData(records=list(records.values()),
                    evidence={k: v.model_dump(mode="json") for k, v in found.items()})
    page = paper_page(records["alpha"], data, "@misc{k, title={x}}")
    assert "## Sources" in page and "- <https://arxiv.org/abs/2210.17323>" in page
    assert 'Supporting sentences (1 claim)' in page and "keeps perplexity close at 4 bits" in page


def test_a_file_that_is_not_utf8_is_one_error_line(tmp_path):
    records, papers = _setup(tmp_path, _evidence())
    (tmp_path / "evidence" / "alpha.yaml").write_bytes(b"id: alpha\nabstract: caf\xe9\n")
    (err,) = check_evidence(records, papers)
    assert err.field == "file" and "not UTF-8" in err.message


def test_a_repeated_key_is_one_error_line_not_a_lost_check(tmp_path):
    twice = _evidence() + "checks:\n  - checker: other\n    date: 2026-12-03\n    claims: []\n"
    records, papers = _setup(tmp_path, twice)
    (err,) = check_evidence(records, papers)
    assert (err.line, err.field) == (10, "checks")
    assert "duplicate key (also on line 3)" in err.message


def test_a_list_as_a_key_is_one_error_line_not_a_traceback(tmp_path):
    records, papers = _setup(tmp_path, "id: alpha\n? [a, b]\n: 1\nchecks: []\n")
    (err,) = check_evidence(records, papers)
    assert (err.line, err.field) == (2, "yaml") and "\n" not in str(err)


def test_a_clean_pass_is_remembered_and_any_change_is_checked_again(tmp_path, monkeypatch):
    import catalog.evidence as ev

    monkeypatch.setenv("ATLAS_CACHE", str(tmp_path / "cache"))
    records, papers = _setup(tmp_path, _evidence())
    assert ev.check_evidence_cached(records, papers) == []
    assert len(list((tmp_path / "cache" / "checks").glob("evidence-ok-*"))) == 1
    real = ev.check_evidence
    monkeypatch.setattr(ev, "check_evidence", lambda *a: (_ for _ in ()).throw(AssertionError("parsed")))
    assert ev.check_evidence_cached(records, papers) == []  # same files, same records: not parsed again
    monkeypatch.setattr(ev, "check_evidence", real)
    # an evidence file edited: checked again, the error found
    (tmp_path / "evidence" / "alpha.yaml").write_text(_evidence(source="https://example.org/blog"))
    (err,) = ev.check_evidence_cached(records, papers)
    assert "is not in the record's sources" in err.message
    # the file fixed again, but the record's sources changed: checked again
    (tmp_path / "evidence" / "alpha.yaml").write_text(_evidence())
    assert ev.check_evidence_cached(records, papers) == []
    records2, _ = _setup(tmp_path / "b", _evidence(), sources="sources: [https://example.org/other]\n")
    assert "is not in the record's sources" in ev.check_evidence_cached(records2, papers)[0].message
    # a new evidence file for an unknown id is seen too
    (tmp_path / "evidence" / "ghost.yaml").write_text(_evidence().replace("id: alpha", "id: ghost"))
    assert "no record papers/ghost.yaml" in str(ev.check_evidence_cached(records, papers)[0])


def test_an_unwritable_cache_still_checks(tmp_path, monkeypatch):
    import catalog.evidence as ev

    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache directory would be")
    monkeypatch.setenv("ATLAS_CACHE", str(blocker))
    records, papers = _setup(tmp_path, _evidence())
    assert ev.check_evidence_cached(records, papers) == []
    (tmp_path / "evidence" / "alpha.yaml").write_text(_evidence(source="https://example.org/blog"))
    assert len(ev.check_evidence_cached(records, papers)) == 1
