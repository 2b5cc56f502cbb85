"""`atlas add` / `atlas enrich` offline, against recorded real arXiv and OpenAlex answers (tests/fixtures,
SOURCES.md says where each comes from).

An `id_list=` request is answered as arXiv does: the recorded feed's header and the recorded entries
of the ids asked for (`totalResults` = their number); the entries are the recorded bytes.
OpenAlex's "not found" (HTTP 404) and "no hits" (an empty result list) are the two small answers
written here; the one published-work answer is the recorded PeerJ work W2741809807.
"""

import datetime as dt
import json
import re
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
import requests
import responses
import yaml
from typer.testing import CliRunner

from catalog.cli import app
from catalog.enrich import code_link, edit_record, slug_for, suggest_from, venue_of
from catalog.http import CachedSession

FIXTURES = Path(__file__).parent / "fixtures"
ARXIV = re.compile(r"https://export\.arxiv\.org/api/query\?.*")
# every single work but the recorded PeerJ one (registered where a test needs it) is unknown
OPENALEX_ONE = re.compile(r"https://api\.openalex\.org/works/(?!https%3A%2F%2Fdoi\.org%2F10\.7717).*")
OPENALEX_LIST = re.compile(r"https://api\.openalex\.org/works\?.*")
OFFLINE = requests.exceptions.ConnectionError("Failed to establish a new connection: [Errno -3] "
                                              "Temporary failure in name resolution")
runner = CliRunner()

SUMMARY = """summary:
  problem: {problem}
  method: >-
    The method is described in enough words for the summary length check of the catalog, which asks
    for eighty to two hundred and twenty words over the four fields of every record in it, so this
    sentence keeps going for a while longer than a normal one would need to.
  results: >-
    Results are reported on the tasks the paper studies, with the numbers the paper states and no
    others, compared against the baselines the paper chose for the comparison it makes.
  limitations: Only the settings of the paper are covered.
"""


def record(rid, title, *, arxiv, themes, taxonomy, tags, problem, url=None, venue="null", code="null"):
    arxiv_line = f'arxiv: "{arxiv}"' if arxiv else "arxiv: null"
    return (f"id: {rid}\n"
            f"title: \"{title}\"\n"
            "authors: [Ada Lovelace, Alan Turing]\n"
            f"year: {2000 + int(arxiv[:2]) if arxiv else 2020}\n"
            f"venue: {venue}\n"
            f"{arxiv_line}\n"
            f"url: {url or f'https://arxiv.org/abs/{arxiv}'}\n"
            f"code: {code}\n"
            f"themes: {themes}\n"
            f"taxonomy: {taxonomy}\n"
            f"tags: {tags}\n"
            + SUMMARY.format(problem=problem)
            + "related: []\n")


BASE = {
    "alpha": record("alpha", "Accurate post-training quantization of transformer weights to four bits",
                    arxiv="2210.17323", themes="[quantization]", taxonomy="quantization/ptq/weight-only",
                    tags="[post-training, weight-only, 4-bit]",
                    problem="Rounding the weights of a large language model to four bits loses accuracy."),
    "stressbench": record("stressbench", "Benchmarking the reasoning of language models on many problems",
                          arxiv="2401.00002", themes="[benchmarks]", taxonomy="benchmarks/evaluation",
                          tags="[benchmark, evaluation, reasoning]",
                          problem="Reasoning benchmarks evaluate large reasoning models on one question at "
                                  "a time and saturate, so models look alike."),
    "kvquant": record("kvquant", "Quantizing the key-value cache of long-context inference",
                      arxiv="2401.00003", themes="[memory]", taxonomy="memory/kv-quantization",
                      tags="[kv-cache, kv-quantization, long-context]",
                      problem="The key-value cache of long-context generation takes more memory than "
                              "the weights."),
}


@pytest.fixture(scope="module")
def index_cache(tmp_path_factory):
    """One search-index cache for the module: every test's catalog starts from the same BASE records,
    so the encoder embeds them once (the first `atlas add` that suggests builds it)."""
    return tmp_path_factory.mktemp("index")


@pytest.fixture(scope="module")
def numpy_encoder():
    from catalog.index import QueryEncoder

    return QueryEncoder()


@pytest.fixture
def env(tmp_path, index_cache, numpy_encoder, monkeypatch):
    # The records are embedded with the project's NumPy port of the same MiniLM encoder (the one that
    # embeds queries): the same vectors up to rounding, without the seconds torch takes to import.
    monkeypatch.setattr("catalog.index.embed_texts", lambda texts, **_: np.stack(
        [numpy_encoder.encode(t) for t in texts]).astype(np.float32))
    monkeypatch.setenv("ATLAS_CACHE", str(index_cache))
    monkeypatch.setenv("ATLAS_HTTP_CACHE", str(tmp_path / "http"))
    monkeypatch.setenv("ATLAS_HTTP_BACKOFF", "0")
    return tmp_path


def catalog(root: Path, extra: dict | None = None) -> Path:
    papers = root / "papers"
    papers.mkdir(parents=True)
    for rid, text in {**BASE, **(extra or {})}.items():
        (papers / f"{rid}.yaml").write_text(text, encoding="utf-8")
    return papers


def feed(name: str) -> bytes:
    return json.loads((FIXTURES / name).read_text())["body"].encode("latin-1")


def feed_entry(name: str, arxiv_id: str) -> str:
    body = feed(name).decode("utf-8")
    return next(e for e in re.findall(r"<entry>.*?</entry>", body, re.S) if f"abs/{arxiv_id}v" in e)


def serve_arxiv(*names: str) -> None:
    """Answer arXiv `id_list=` requests with the recorded entries of those ids from these feeds."""
    entries, header = {}, None
    for name in names:
        body = feed(name).decode("utf-8")
        header = header or body[:body.index("<entry>")]
        for entry in re.findall(r"<entry>.*?</entry>", body, re.S):
            entries[re.search(r"abs/([^<]+?)v\d+</id>", entry).group(1)] = entry

    def answer(request):
        asked = parse_qs(urlsplit(request.url).query)["id_list"][0].split(",")
        found = [entries[i] for i in asked if i in entries]
        head = re.sub(r"<opensearch:totalResults>\d+<", f"<opensearch:totalResults>{len(found)}<", header)
        return 200, {"Content-Type": "application/atom+xml"}, head + "\n  ".join(found) + "\n</feed>\n"

    responses.add_callback(responses.GET, ARXIV, callback=answer)


def openalex_knows_nothing() -> None:
    responses.add(responses.GET, OPENALEX_ONE, status=404,
                  json={"error": "NotFoundError", "message": "The requested resource could not be found."})
    responses.add(responses.GET, OPENALEX_LIST, json={"meta": {"count": 0, "page": 1, "per_page": 10},
                                                      "results": [], "group_by": []})


def files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*.yaml"))
            if "http" not in p.parts and "index" not in p.parts}


def add(papers: Path, *args: str):
    return runner.invoke(app, ["add", *args, "--papers", str(papers)])


# -- atlas add ---------------------------------------------------------------------------------------

@responses.activate
def test_add_fills_every_field_and_suggests_from_the_nearest_records(env):
    serve_arxiv("arxiv_query_testing_s40_m10.json")
    openalex_knows_nothing()
    papers = catalog(env)
    result = add(papers, "2507.10541")
    assert result.exit_code == 0, result.output
    path = papers / "rest.yaml"
    assert result.stdout.strip() == str(path)
    text = path.read_text()
    data = yaml.safe_load(text)
    assert data["title"] == "REST: Stress Testing Large Reasoning Models by Asking Multiple Problems at Once"
    assert data["authors"] == ["Zhuoshi Pan", "Qizhi Pei", "Yu Li", "Qiyao Sun", "Zinan Tang",
                               "H. Vicky Zhao", "Conghui He", "Lijun Wu"]
    assert (data["year"], data["arxiv"], data["venue"]) == (2025, "2507.10541", None)
    assert data["url"] == "https://arxiv.org/abs/2507.10541"
    assert data["sources"] == ["https://arxiv.org/abs/2507.10541"]
    assert data["added"] == dt.date.today()
    # the code link is the one the abstract names ("Code and results are available at ...")
    assert data["code"] == "https://opendatalab.github.io/REST"
    # suggestions: the values of the nearest record, marked as suggestions that name it
    assert data["taxonomy"] == "benchmarks/evaluation" and data["themes"][0] == "benchmarks"
    assert {"benchmark", "evaluation", "reasoning"} <= set(data["tags"])
    assert re.search(r"# suggested by atlas add \(nearest records: stressbench", text)
    assert text.count("# suggestion\n") == 3
    assert 'arxiv: "2507.10541"' in text and text.index("themes:") < text.index("summary:")
    # the evidence file holds the abstract verbatim (whitespace as the feed's, joined)
    evidence = yaml.safe_load((env / "evidence" / "rest.yaml").read_text())
    abstract = re.search(r"<summary>(.*?)</summary>", feed_entry("arxiv_query_testing_s40_m10.json",
                                                                "2507.10541"), re.S).group(1)
    assert evidence["abstract"] == " ".join(abstract.split())
    claims = evidence["checks"][0]["claims"]
    assert claims[-1]["quote"].startswith("Code and results are available at https://opendatalab.github.io")
    # the draft summary is what validate reports: one line per field, naming the file, nothing else
    check = runner.invoke(app, ["validate", "--papers", str(papers), "--no-coverage"])
    lines = [line for line in check.stderr.splitlines() if "rest.yaml" in line]
    assert check.exit_code == 1
    assert [re.search(r"(summary\.\w+)", line).group(1) for line in lines] == [
        "summary.problem", "summary.method", "summary.results", "summary.limitations"]
    assert all("papers/rest.yaml:" in line and "draft" in line for line in lines)
    # ... and the copy check reads the stored abstract once the summary is written
    copied = "a stress-testing framework that exposes LRMs to multiple problems simultaneously and more"
    path.write_text(re.sub(r"problem: .*", f"problem: {copied}", text))
    check = runner.invoke(app, ["validate", "--papers", str(papers), "--no-coverage"])
    assert "copies 10 words of the abstract" in check.stderr


@responses.activate
def test_add_takes_the_code_link_from_the_comments_field(env):
    serve_arxiv("arxiv_query_testing_s40_m10.json")
    openalex_knows_nothing()
    papers = catalog(env)
    result = add(papers, "1706.00679", "--id", "gp-testing", "--no-suggest")
    assert result.exit_code == 0, result.output
    data = yaml.safe_load((papers / "gp-testing.yaml").read_text())
    assert data["code"] == "https://github.com/ydecastro/super-resolution-testing"
    assert data["year"] == 2017 and data["authors"][1] == "Yohann De Castro"
    claim = yaml.safe_load((env / "evidence" / "gp-testing.yaml").read_text())["checks"][0]["claims"][-1]
    assert "arXiv comments" in claim["claim"] and "Jupyter notebook available at" in claim["quote"]


def test_code_link_rules():
    rest = re.search(r"<summary>(.*?)</summary>",
                     feed_entry("arxiv_query_testing_s40_m10.json", "2507.10541"), re.S).group(1)
    link = code_link(" ".join(rest.split()))
    assert (link.url, link.where) == ("https://opendatalab.github.io/REST", "abstract")  # trailing "." cut
    # a repository beats a project page; an owner without a repository is no code link
    both = "Code: https://github.com/org/repo.git. Demo at https://org.github.io/site with code."
    assert code_link(both).url == "https://github.com/org/repo"
    assert code_link("See https://github.com/someone for more.") is None
    assert code_link("Project page https://x.github.io/p (no source).") is None
    assert code_link("", "Code at https://gitlab.com/a/b/-/tree/main.").url == "https://gitlab.com/a/b/-/tree/main"
    assert slug_for("REST: Stress Testing Large Reasoning Models") == "rest"


@responses.activate
def test_add_refuses_the_three_kinds_of_duplicate(env):
    serve_arxiv("arxiv_query_testing_s40_m10.json", "arxiv_query_testing_m10.json")
    openalex_knows_nothing()
    same_id = record("rest-old", "Another title", arxiv="2507.10541", themes="[benchmarks]",
                     taxonomy="benchmarks/evaluation", tags="[benchmark]", problem="x y z")
    same_title = record("rest-copy", "REST - stress testing large reasoning models by asking multiple "
                        "problems at once!", arxiv="2401.00009", themes="[benchmarks]",
                        taxonomy="benchmarks/evaluation", tags="[benchmark]", problem="x y z")
    published = record("active-fuzzing", "Active fuzzing for cyber-physical systems (proceedings title)",
                       arxiv=None, url="https://doi.org/10.1145/3395363.3397376", venue="ISSTA 2020",
                       themes="[benchmarks]", taxonomy="benchmarks/evaluation", tags="[benchmark]",
                       problem="x y z")
    # 1. the same arXiv id: refused before any request
    papers = catalog(env / "one", {"rest-old": same_id})
    result = add(papers, "2507.10541")
    assert result.exit_code == 1 and len(result.stderr.strip().splitlines()) == 1
    assert "already in the catalog as 'rest-old'" in result.stderr and len(responses.calls) == 0
    # 2. the same title after normalisation (case, punctuation), under another arXiv id
    papers = catalog(env / "two", {"rest-copy": same_title})
    before = files(env)
    result = add(papers, "2507.10541", "--no-suggest")
    assert result.exit_code == 1 and "same title as 'rest-copy'" in result.stderr
    assert files(env) == before
    # 3. the published version is catalogued: arXiv reports its DOI, a record links that DOI
    papers = catalog(env / "three", {"active-fuzzing": published})
    before = files(env)
    result = add(papers, "2005.14124", "--no-suggest")
    assert result.exit_code == 1, result.output
    assert "is a version of 'active-fuzzing'" in result.stderr and "10.1145/3395363.3397376" in result.stderr
    assert files(env) == before


@responses.activate
def test_add_handles_several_ids_independently(env):
    serve_arxiv("arxiv_query_testing_s40_m10.json")
    openalex_knows_nothing()
    papers = catalog(env)
    result = add(papers, "2507.10541", "9912.00001", "1706.00679", "2210.17323", "--no-suggest")
    assert result.exit_code == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("added 2 of 4 (rest, testing-gaussian-process)") and "2 failed" in last
    assert "arXiv has no paper 9912.00001" in result.stderr and "as 'alpha'" in result.stderr
    arxiv_calls = [c for c in responses.calls if "export.arxiv.org" in c.request.url]
    assert len(arxiv_calls) == 1  # one request for the whole batch
    assert (papers / "rest.yaml").exists() and (papers / "testing-gaussian-process.yaml").exists()


def test_add_id_option_names_one_record(env):
    result = add(catalog(env), "2507.10541", "1706.00679", "--id", "x")
    assert result.exit_code == 1 and "--id names one record" in result.stderr


@responses.activate
def test_add_unknown_id_writes_nothing(env):
    responses.add(responses.GET, ARXIV, body=feed("arxiv_id_0000.0000_empty.json"))
    papers = catalog(env)
    before = files(env)
    result = add(papers, "0000.0000")
    assert result.exit_code == 1 and "arXiv has no paper 0000.0000" in result.stderr
    assert files(env) == before


@responses.activate
@pytest.mark.parametrize("command", [["add", "2507.10541"], ["enrich", "--yes"]])
def test_no_network_is_one_line_exit_2_and_nothing_written(env, command):
    responses.add(responses.GET, ARXIV, body=OFFLINE)
    responses.add(responses.GET, re.compile(r"https://api\.openalex\.org/.*"), body=OFFLINE)
    papers = catalog(env)
    before = files(env)
    result = runner.invoke(app, [*command, "--papers", str(papers)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach" in lines[0] and "network" in lines[0]
    assert files(env) == before and not list(env.rglob("*.tmp"))


# -- atlas enrich ------------------------------------------------------------------------------------

PEERJ = record("state-of-oa", "The state of OA: a large-scale analysis of the prevalence and impact of Open "
               "Access articles", arxiv=None, url="https://doi.org/10.7717/peerj.4375", themes="[benchmarks]",
               taxonomy="benchmarks/evaluation", tags="[benchmark]", problem="x y z").replace(
    "venue: null\n", "venue: null  # no venue yet\n").replace("id: state-of-oa\n",
                                                              "# a comment at the top\nid: state-of-oa\n")
GP = record("gp-testing", "Testing Gaussian Process with Applications to Super-Resolution",
            arxiv="1706.00679", themes="[benchmarks]", taxonomy="benchmarks/evaluation", tags="[benchmark]",
            problem="x y z", venue="Applied and Computational Harmonic Analysis 2020")


def enrich_setup(env):
    responses.add(responses.GET, re.compile(r"https://api\.openalex\.org/works/https%3A%2F%2Fdoi\.org%2F"
                                            r"10\.7717%2Fpeerj\.4375"),
                  body=(FIXTURES / "openalex_work_W2741809807.json").read_text())
    openalex_knows_nothing()
    serve_arxiv("arxiv_query_testing_s40_m10.json")
    return catalog(env, {"state-of-oa": PEERJ, "gp-testing": GP})


@responses.activate
def test_enrich_shows_a_diff_and_writes_nothing_without_yes(env):
    papers = enrich_setup(env)
    before = files(env)
    result = runner.invoke(app, ["enrich", "state-of-oa", "gp-testing", "--papers", str(papers)])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert re.search(r"^--- .*papers/state-of-oa\.yaml\n\+\+\+ .*papers/state-of-oa\.yaml$", out, re.M)
    assert "-venue: null  # no venue yet\n+venue: PeerJ 2018  # no venue yet\n" in out
    assert "-code: null\n+code: https://github.com/ydecastro/super-resolution-testing\n" in out
    assert "2 file(s) would change; run again with --yes" in result.stderr
    assert files(env) == before


@responses.activate
def test_enrich_yes_keeps_comments_and_key_order(env):
    papers = enrich_setup(env)
    result = runner.invoke(app, ["enrich", "state-of-oa", "gp-testing", "--yes", "--papers", str(papers)])
    assert result.exit_code == 0, result.output
    expected = PEERJ.replace("venue: null  #", "venue: PeerJ 2018  #")
    assert (papers / "state-of-oa.yaml").read_text() == expected
    assert (papers / "gp-testing.yaml").read_text() == GP.replace(
        "code: null", "code: https://github.com/ydecastro/super-resolution-testing")
    assert not list(papers.glob(".*.tmp"))
    # a record whose venue is set is left alone
    assert "Applied and Computational Harmonic Analysis 2020" in (papers / "gp-testing.yaml").read_text()


@responses.activate
def test_enrich_second_run_reads_the_cache(env):
    papers = enrich_setup(env)
    first = runner.invoke(app, ["enrich", "state-of-oa", "--papers", str(papers)])
    assert first.exit_code == 0, first.output
    calls = len(responses.calls)
    assert calls >= 1 and list((env / "http").glob("*.json"))
    again = runner.invoke(app, ["enrich", "state-of-oa", "--papers", str(papers)])
    assert again.stdout == first.stdout and len(responses.calls) == calls  # no request at all
    runner.invoke(app, ["enrich", "state-of-oa", "--no-cache", "--papers", str(papers)])
    assert len(responses.calls) == 2 * calls


def test_edit_record_touches_only_the_keys_given():
    text = "# top\nid: x\ntitle: \"A: b\"  # quoted\nyear: 2024\nvenue: null\nauthors: [A, B]\ncode: null\n"
    assert edit_record(text, {"venue": "ICLR 2025"}) == text.replace("venue: null", "venue: ICLR 2025")
    commented = "id: x\nvenue: null   # three spaces\ncode: null # one\n"
    assert edit_record(commented, {"venue": "NeurIPS 2024", "code": "https://github.com/a/b"}) == (
        "id: x\nvenue: NeurIPS 2024   # three spaces\ncode: https://github.com/a/b # one\n")
    inserted = edit_record("id: x\nyear: 2024\nurl: https://a.org\n", {"code": "https://github.com/a/b"})
    assert inserted == "id: x\nyear: 2024\nurl: https://a.org\ncode: https://github.com/a/b\n"


def test_venue_of_the_recorded_openalex_work():
    work = json.loads((FIXTURES / "openalex_work_W2741809807.json").read_text())
    assert venue_of(work) == "PeerJ 2018"
    preprint = {**work, "primary_location": {"source": {"display_name": "arXiv (Cornell University)",
                                                        "type": "repository"}}, "locations": []}
    assert venue_of(preprint) is None


def test_duplicate_of_a_published_version_that_openalex_reports():
    from types import SimpleNamespace as R

    from catalog.enrich import ArxivMeta, _published, duplicate_of

    published = _published(json.loads((FIXTURES / "openalex_work_W2741809807.json").read_text()))
    assert (published.venue, published.doi) == ("PeerJ 2018", "10.7717/peerj.4375")
    preprint = ArxivMeta(arxiv="1705.00001", title="The state of OA (preprint title)", authors=["A"],
                         year=2017, abstract="")
    by_title = R(id="oa", arxiv=None, title="The State of OA: A large-scale analysis of the prevalence "
                 "and impact of Open Access articles", url="https://peerj.com/articles/4375", code=None,
                 sources=[])
    by_doi = R(id="oa2", arxiv=None, title="Other", url="https://example.org/x", code=None,
               sources=["https://doi.org/10.7717/PEERJ.4375"])
    assert "is a version of 'oa'" in duplicate_of([by_title], preprint, published)
    assert "DOI 10.7717/peerj.4375" in duplicate_of([by_doi], preprint, published)
    assert duplicate_of([by_doi], preprint, None) is None


def test_suggest_from_weights_votes_by_score():
    from types import SimpleNamespace as R

    a = R(id="a", themes=["pruning"], taxonomy="pruning/unstructured", tags=["one-shot", "magnitude"])
    b = R(id="b", themes=["pruning", "quantization"], taxonomy="pruning/unstructured", tags=["one-shot"])
    c = R(id="c", themes=["memory"], taxonomy="memory/kv-eviction", tags=["kv-cache"])
    s = suggest_from([(a, 1.0), (b, 0.5), (c, 0.9)])
    assert s.taxonomy == "pruning/unstructured" and s.themes == ["pruning", "memory"]
    assert s.tags[0] == "one-shot" and "kv-cache" in s.tags and s.neighbours == ["a", "b", "c"]


# -- HTTP ----------------------------------------------------------------------------------------------

@responses.activate
def test_http_retries_429_then_200_with_backoff(tmp_path):
    url = "https://api.openalex.org/works/W2741809807"
    responses.add(responses.GET, url, status=429, headers={"Retry-After": "2"})
    responses.add(responses.GET, url, status=503)
    responses.add(responses.GET, url, body=(FIXTURES / "openalex_work_W2741809807.json").read_text())
    waits = []
    session = CachedSession(tmp_path, sleep=waits.append, backoff=0.5)
    response = session.get(url)
    assert response.status_code == 200 and len(responses.calls) == 3
    assert waits == [2.0, 1.0]  # Retry-After first, then 0.5 * 2^1
    assert all(c.request.req_kwargs["timeout"] == session.timeout for c in responses.calls)


@responses.activate
def test_http_retries_are_bounded(tmp_path):
    url = "https://export.arxiv.org/api/query?id_list=1"
    responses.add(responses.GET, url, status=503)
    waits = []
    response = CachedSession(tmp_path, sleep=waits.append, retries=3).get(url)
    assert response.status_code == 503 and len(responses.calls) == 4 and waits == [1.0, 2.0, 4.0]
    assert not list(tmp_path.iterdir())  # an error is never cached


@responses.activate
def test_http_cache_hit_makes_no_request(tmp_path):
    url = "https://api.openalex.org/works/W2741809807"
    responses.add(responses.GET, url, body=(FIXTURES / "openalex_work_W2741809807.json").read_text(),
                  content_type="application/json")
    first = CachedSession(tmp_path).get(url)
    second = CachedSession(tmp_path).get(url)
    assert len(responses.calls) == 1 and second.content == first.content and second.json()["id"]
    assert CachedSession(tmp_path, use_cache=False).get(url).status_code == 200
    assert len(responses.calls) == 2
    stale = CachedSession(tmp_path, max_age=0)
    stale.get(url)
    assert len(responses.calls) == 3


def test_openalex_findings_venues_become_the_catalog_spelling():
    from catalog.enrich import venue_of

    def work(name, year=2023):
        return {"primary_location": {"source": {"display_name": name, "type": "conference"}},
                "publication_year": year}

    assert venue_of(work("Findings of the Association for Computational Linguistics: EMNLP 2023")) == \
        "EMNLP 2023 (Findings)"
    assert venue_of(work("Findings of the Association for Computational Linguistics: ACL 2023")) == \
        "ACL 2023 (Findings)"
    assert venue_of(work("International Conference on Learning Representations")) == "ICLR 2023"
