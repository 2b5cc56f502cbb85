"""Never lose work (issue 22): the site directory, interrupted builds, damaged caches, atlas serve.

Builds run in-process on a two-record catalog; the registry (a torch import) and the similar-papers
step are stubbed where the pages do not need them, so the suite stays fast.
"""

from __future__ import annotations

import json
import socket
import threading

import numpy as np
import pytest
from typer.testing import CliRunner

from catalog.cli import app
from catalog.site import build_site
from catalog.site_dir import MARKER, SiteDirError, site_problem
from tests.catalog_fixtures import two_good

runner = CliRunner()


def no_traceback(result):
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output


@pytest.fixture
def fast_build(monkeypatch, tmp_path):
    monkeypatch.setenv("ATLAS_SITE_NO_SIMILAR", "1")
    monkeypatch.setenv("ATLAS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("catalog.site_data.cached_registry_index", lambda cache_dir: {})
    return two_good(tmp_path / "papers")


@pytest.fixture(scope="module")
def built_site(tmp_path_factory):
    base = tmp_path_factory.mktemp("built")
    mp = pytest.MonkeyPatch()
    mp.setenv("ATLAS_SITE_NO_SIMILAR", "1")
    mp.setenv("ATLAS_CACHE", str(base / "cache"))
    mp.setattr("catalog.site_data.cached_registry_index", lambda cache_dir: {})
    try:
        build_site(two_good(base / "papers"), base / "site")
    finally:
        mp.undo()
    return base / "site"


def snapshot(directory):
    files = sorted(p for p in directory.rglob("*") if p.is_file())
    return {str(p.relative_to(directory)): p.read_bytes() for p in files}


def leftovers(parent):
    return [p.name for p in parent.iterdir() if p.name.startswith(".") and ".tmp-" in p.name or
            p.name.endswith(".old")]


# -- the site directory ----------------------------------------------------------------------------

def test_build_refuses_a_directory_of_the_users_files(fast_build, tmp_path):
    work = tmp_path / "work"
    (work / "src").mkdir(parents=True)
    (work / "thesis.tex").write_text("\\documentclass{article}")
    result = runner.invoke(app, ["build", "--site-dir", str(work), "--papers", str(fast_build)])
    no_traceback(result)
    assert result.exit_code == 1 and "--force" in result.stderr and len(result.stderr.splitlines()) == 1
    assert (work / "thesis.tex").read_text() == "\\documentclass{article}" and (work / "src").is_dir()
    file_target = tmp_path / "notes.txt"
    file_target.write_text("keep me")
    result = runner.invoke(app, ["build", "--site-dir", str(file_target), "--papers", str(fast_build)])
    assert result.exit_code == 1 and "not a directory" in result.stderr
    assert file_target.read_text() == "keep me"


@pytest.mark.parametrize("where", ["cwd", "parent", "git"])
def test_force_never_replaces_the_working_directory_or_a_checkout(fast_build, tmp_path, monkeypatch, where):
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    (work / "keep.txt").write_text("x")
    if where == "git":
        (work / ".git").mkdir()
    if where != "git":
        monkeypatch.chdir(work / "sub" if where == "parent" else work)
    with pytest.raises(SiteDirError, match="contains the current directory or a git"):
        build_site(fast_build, work, force=True)
    assert (work / "keep.txt").exists()


def test_build_with_force_replaces_the_directory(fast_build, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "old.txt").write_text("x")
    result = runner.invoke(app, ["build", "--site-dir", str(work), "--force", "--papers", str(fast_build)])
    assert result.exit_code == 0, result.output
    assert not (work / "old.txt").exists() and (work / MARKER).is_file() and site_problem(work) is None
    assert not leftovers(tmp_path)


def test_site_of_an_older_atlas_is_replaced_without_force(fast_build, tmp_path):
    old = tmp_path / "old-site"
    (old / "search").mkdir(parents=True)
    for name in ("index.html", "sitemap.xml", "search/search_index.json"):
        (old / name).write_text("{}")
    build_site(fast_build, old)
    assert site_problem(old) is None


@pytest.mark.parametrize("failure", [KeyboardInterrupt, RuntimeError])
def test_interrupted_build_keeps_the_previous_site(built_site, fast_build, monkeypatch, failure):
    before = snapshot(built_site)

    def dies_halfway(config):
        (__import__("pathlib").Path(config["site_dir"]) / "index.html").write_text("half")
        raise failure("stopped")

    monkeypatch.setattr("mkdocs.commands.build.build", dies_halfway)
    with pytest.raises(failure):
        build_site(fast_build, built_site)
    assert snapshot(built_site) == before and site_problem(built_site) is None
    assert not leftovers(built_site.parent)


def test_failed_first_build_leaves_no_directory(fast_build, tmp_path, monkeypatch):
    monkeypatch.setattr("mkdocs.commands.build.build", lambda config: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        build_site(fast_build, tmp_path / "new-site")
    assert not (tmp_path / "new-site").exists() and not leftovers(tmp_path)


# -- atlas serve -------------------------------------------------------------------------------------

@pytest.fixture
def no_serving(monkeypatch):
    """serve_forever returns at once (as after Ctrl-C); the bound port is recorded."""
    bound = []

    def serve_once(self, *args, **kwargs):
        bound.append(self.server_address[1])
        raise KeyboardInterrupt

    monkeypatch.setattr("http.server.ThreadingHTTPServer.serve_forever", serve_once)
    return bound


def test_serve_port_zero_reports_the_real_port(built_site, no_serving):
    result = runner.invoke(app, ["serve", "--no-build", "--site-dir", str(built_site), "--port", "0"])
    assert result.exit_code == 0, result.output
    assert no_serving and no_serving[0] > 0 and f"127.0.0.1:{no_serving[0]}/" in result.stderr


@pytest.mark.parametrize("port", ["70000", "-5", "abc"])
def test_serve_bad_port_is_one_line_exit_1(port):
    result = runner.invoke(app, ["serve", "--no-build", "--port", port])
    no_traceback(result)
    assert result.exit_code == 1 and "--port" in result.output


def test_port_in_use_is_reported_before_building(fast_build, tmp_path, monkeypatch):
    built = []
    monkeypatch.setattr("catalog.commands.site_cmds.build_site", lambda *a, **k: built.append(1))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = runner.invoke(app, ["serve", "--port", str(port), "--site-dir", str(tmp_path / "s"),
                                     "--papers", str(fast_build)])
    no_traceback(result)
    assert result.exit_code == 2 and "cannot listen" in result.stderr and not built


def test_serve_refuses_an_incomplete_site(built_site, tmp_path, no_serving):
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "index.html").write_text("<p>half a site</p>")
    result = runner.invoke(app, ["serve", "--no-build", "--site-dir", str(partial), "--port", "0"])
    assert result.exit_code == 1 and "not a complete site" in result.stderr and not no_serving
    marker = json.loads((built_site / MARKER).read_text())
    assert marker["files"] == sum(1 for p in built_site.rglob("*") if p.is_file())
    (partial / MARKER).write_text(json.dumps({"files": marker["files"]}))
    result = runner.invoke(app, ["serve", "--no-build", "--site-dir", str(partial), "--port", "0"])
    assert result.exit_code == 1 and "incomplete" in result.stderr and not no_serving
    result = runner.invoke(app, ["serve", "--no-build", "--site-dir", str(tmp_path / "none"), "--port", "0"])
    assert result.exit_code == 1 and "atlas build" in result.stderr


# -- caches ------------------------------------------------------------------------------------------

@pytest.fixture
def fake_embeddings(monkeypatch):
    """Deterministic unit vectors instead of the model: the cache logic is what is tested."""
    calls = []

    def embed(texts, progress):
        calls.append(len(texts))
        rng = np.random.default_rng(len(texts))
        v = rng.standard_normal((len(texts), 384)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    monkeypatch.setattr("catalog.index._embed_with_progress", embed)
    return calls


@pytest.mark.parametrize("manifest", ["[]", "null", '{"ids": 5}', '{"ids": ["alpha"], "digests": 3}', "{"])
def test_damaged_manifest_is_rebuilt(tmp_path, fake_embeddings, manifest):
    from catalog.index import load_or_build
    from catalog.load import load_records

    records = load_records(two_good(tmp_path / "papers"))
    first = load_or_build(records, tmp_path / "cache", progress=False)
    (tmp_path / "cache" / "search" / first.key / "manifest.json").write_text(manifest)
    again = load_or_build(records, tmp_path / "cache", progress=False)  # neither raises nor reuses it
    assert not again.cached and again.embedded == first.embedded and again.saved
    assert load_or_build(records, tmp_path / "cache", progress=False).cached  # and it is whole again


def test_index_whose_cache_vanishes_mid_run_fails(tmp_path, fake_embeddings, monkeypatch):
    import shutil

    import catalog.index as index

    real = index._embed_with_progress

    def embed_then_lose_the_cache(texts, progress):
        shutil.rmtree(tmp_path / "cache")
        return real(texts, progress)

    monkeypatch.setattr(index, "_embed_with_progress", embed_then_lose_the_cache)
    papers = two_good(tmp_path / "papers")
    result = runner.invoke(app, ["index", "--papers", str(papers), "--cache-dir", str(tmp_path / "cache")])
    no_traceback(result)
    assert result.exit_code == 2 and "could not be saved" in result.stderr and "ok:" not in result.stderr


@pytest.mark.parametrize("content", ["[]", "null", '{"alpha": 5}', '{"alpha": [1, 2]}', "not json"])
def test_damaged_similar_cache_is_recomputed(tmp_path, monkeypatch, content):
    from catalog import site_data
    from catalog.load import load_records

    class FakeSearcher:
        def __init__(self, records, **kwargs):
            self.records = records

        def similar(self, rid, top_k):
            return [type("Hit", (), {"record": r}) for r in self.records if r.id != rid][:top_k]

    monkeypatch.setattr("catalog.search.Searcher", FakeSearcher)
    records = load_records(two_good(tmp_path / "papers"))
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / f"similar-{site_data.records_hash(records)}.json").write_text(content)
    assert site_data.similar_papers(records, cache) == {"alpha": ["beta"], "beta": ["alpha"]}
    assert json.loads((cache / f"similar-{site_data.records_hash(records)}.json").read_text())["alpha"]


@pytest.mark.parametrize("content", ["[]", '{"m": 5}', '{"m": {"name": 1}}'])
def test_damaged_impls_cache_is_recomputed(tmp_path, monkeypatch, content):
    from catalog import site_data

    monkeypatch.setattr(site_data, "impl_sources_hash", lambda: "h")
    monkeypatch.setattr(site_data, "registry_index", lambda: {"m": {"name": "x", "names": ["x"], "doc": ""}})
    (tmp_path / "impls-h.json").write_text(content)
    assert site_data.cached_registry_index(tmp_path) == {"m": {"name": "x", "names": ["x"], "doc": ""}}


def test_results_files_of_the_wrong_shape_are_skipped(tmp_path):
    from catalog.site_data import load_results

    files = {"a": {"runs": 5}, "b": [{"method": "x", "metrics": [1]}], "c": "text",
             "d": [{"method": 3, "metrics": {}}], "e": {"method": "rtn", "metrics": {"perplexity": 1.0}}}
    for name, data in files.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(data))
    assert list(load_results(tmp_path)) == ["rtn"]


def test_concurrent_build_and_serve_threads_do_not_see_a_half_site(built_site, fast_build):
    """While a rebuild runs, the served directory is always a complete site (swap at the end), and a
    rebuild over a site atlas built needs no --force and leaves no temporary directory."""
    problems, done = [], threading.Event()

    def watch():
        while not done.is_set():
            problem = site_problem(built_site)
            if problem:
                problems.append(problem)
            done.wait(0.002)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        build_site(fast_build, built_site)
    finally:
        done.set()
        watcher.join()
    assert not problems and site_problem(built_site) is None and not leftovers(built_site.parent)


def test_index_never_deletes_what_it_did_not_write(tmp_path, fake_embeddings):
    """--cache-dir may name a folder that holds other things: only index directories are pruned."""
    from catalog.index import load_or_build
    from catalog.load import load_records

    mine = tmp_path / "cache" / "search" / "my-notes"
    mine.mkdir(parents=True)
    (mine / "draft.txt").write_text("keep")
    records = load_records(two_good(tmp_path / "papers"))
    first = load_or_build(records, tmp_path / "cache", progress=False)
    load_or_build(records[:1], tmp_path / "cache", progress=False)  # a new index prunes the old one
    assert (mine / "draft.txt").read_text() == "keep"
    assert not (tmp_path / "cache" / "search" / first.key).exists()
