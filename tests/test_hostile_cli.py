"""No tracebacks (issue 22): hostile files, markup in data, bad options, offline lookups, bad paths.

Every case ends in one clear line on stderr and the README's exit code: 1 for bad input, 2 for a
problem of the environment (no network, a disk that cannot be written, a missing model).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
import responses
from typer.testing import CliRunner

from catalog.cli import app
from catalog.parse import parse_dir
from tests.catalog_fixtures import record_text, two_good, write_catalog

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


def no_traceback(result):
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output


def one_line_error(result, code, *words):
    no_traceback(result)
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    for word in words:
        assert word in lines[0], (word, lines[0])


# -- hostile files in papers/ -----------------------------------------------------------------------

def test_deeply_nested_yaml_is_one_error_for_every_command(tmp_path):
    papers = two_good(tmp_path / "papers")
    (papers / "deep.yaml").write_text("id: deep\ntags: " + "[" * 330 + "]" * 330 + "\n")
    assert len((papers / "deep.yaml").read_bytes()) < 700
    for args in (["validate"], ["list"], ["show", "alpha"], ["export", "-f", "json"]):
        result = runner.invoke(app, [*args, "--papers", str(papers)])
        no_traceback(result)
        assert result.exit_code == 1 and "deep.yaml:2: yaml:" in result.stderr and "nested" in result.stderr


def test_symlink_loops_are_errors_not_crashes(tmp_path):
    papers = two_good(tmp_path / "papers")
    (papers / "loop.yaml").symlink_to(papers / "loop.yaml")
    (papers / "dir.yaml").symlink_to(papers)
    result = runner.invoke(app, ["validate", "--papers", str(papers), "--no-coverage"])
    no_traceback(result)
    assert result.exit_code == 1
    assert "loop.yaml:1: file:" in result.stderr and "dir.yaml:1: file:" in result.stderr
    looped = tmp_path / "looped"
    looped.symlink_to(looped)
    result = runner.invoke(app, ["validate", "--papers", str(looped)])
    one_line_error(result, 1, "not found")


def test_fifo_named_yaml_does_not_hang(tmp_path):
    papers = two_good(tmp_path / "papers")
    os.mkfifo(papers / "x.yaml")
    finished = []
    worker = threading.Thread(target=lambda: finished.append(parse_dir(papers)), daemon=True)
    worker.start()
    worker.join(timeout=20)
    assert finished, "parse_dir blocked on a FIFO"
    assert [e.field for e in finished[0].errors] == ["file"] and len(finished[0].records) == 2


def test_yml_and_upper_case_files_are_reported(tmp_path):
    papers = two_good(tmp_path / "papers")
    (papers / "gamma.yml").write_text(record_text("gamma", arxiv="2305.00001", year=2023))
    (papers / "delta.YAML").write_text(record_text("delta", arxiv="2305.00002", year=2023))
    result = runner.invoke(app, ["validate", "--papers", str(papers), "--no-coverage"])
    no_traceback(result)
    assert result.exit_code == 1
    assert "gamma.yml:1: file: records end in .yaml" in result.stderr and "delta.YAML" in result.stderr


# -- data printed, never read as markup ------------------------------------------------------------

MARKUP_TITLE = "Masking [mask] tokens [/s] with [bold red]style[/] :smile: [link=https://x.org]x[/link]"


@pytest.fixture
def markup_catalog(tmp_path):
    text = record_text("marked", title=MARKUP_TITLE).replace("Ada Lovelace", "\"Ada [/] Lovelace\"")
    return write_catalog(tmp_path / "papers", {"marked": text})


@pytest.mark.parametrize("args", [["show", "marked"], ["list"], ["stats"]])
def test_markup_in_records_prints_literally(markup_catalog, args):
    result = runner.invoke(app, [*args, "--papers", str(markup_catalog)], env={"COLUMNS": "400"})
    no_traceback(result)
    assert result.exit_code == 0
    if args[0] != "stats":
        assert MARKUP_TITLE in result.stdout and "😄" not in result.stdout


def test_markup_in_ids_and_queries_prints_literally(markup_catalog, monkeypatch):
    result = runner.invoke(app, ["show", "[/] x", "--papers", str(markup_catalog)])
    one_line_error(result, 1, "no record '[/] x'")
    from catalog.commands.search_cmds import _show
    from catalog.load import load_records
    from catalog.search import Hit

    hits = [Hit(load_records(markup_catalog)[0], 1.0)]
    _show(hits, "1 results for “[/] x [bold]”", as_json=False)  # the search table and its title


def test_search_on_an_empty_catalog(tmp_path):
    empty = tmp_path / "papers"
    empty.mkdir()
    result = runner.invoke(app, ["search", "[/] x", "--papers", str(empty), "--json"])
    no_traceback(result)
    assert result.exit_code == 0 and json.loads(result.stdout) == []
    from catalog.search import Searcher

    assert Searcher([], cache_dir=None).search("kv cache", mode="bm25") == []


@pytest.mark.parametrize("args", [["search", "x", "--top", "abc"], ["list", "--year", "abc"],
                                  ["search", "x", "--top", "0"], ["list", "--bogus"], ["nosuchcommand"]])
def test_usage_errors_exit_1(args, tmp_path):
    result = runner.invoke(app, [*args, "--papers", str(two_good(tmp_path / "papers"))])
    no_traceback(result)
    assert result.exit_code == 1


# -- exports and files the user asked for ----------------------------------------------------------

def test_export_to_bad_destinations(tmp_path):
    papers = two_good(tmp_path / "papers")
    (tmp_path / "adir").mkdir()
    for target, code, words in ((tmp_path / "missing" / "a.bib", 1, "does not exist"),
                                (tmp_path / "adir", 1, "is a directory"),
                                (Path("/proc/atlas-test.bib"), 2, "cannot write")):
        result = runner.invoke(app, ["export", "-f", "bibtex", "-o", str(target), "--papers", str(papers)])
        one_line_error(result, code, words)
    assert not [p for p in tmp_path.rglob("*") if "tmp" in p.name]
    assert list((tmp_path / "adir").iterdir()) == []


def test_export_writes_through_a_symlink_and_keeps_utf8(tmp_path):
    text = record_text("cjk", title="日本語の量子化 😀 for LLMs").replace("Ada Lovelace", "李 小龍")
    papers = write_catalog(tmp_path / "papers", {"cjk": text})
    real = tmp_path / "real.bib"
    real.write_text("old")
    (tmp_path / "link.bib").symlink_to(real)
    result = runner.invoke(app, ["export", "-f", "bibtex", "-o", str(tmp_path / "link.bib"),
                                 "--papers", str(papers)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "link.bib").is_symlink()
    bib = real.read_text(encoding="utf-8")
    assert "日本語の量子化 😀" in bib and "小龍" in bib and "U+" not in bib and "⟨" not in bib


# -- network lookups ----------------------------------------------------------------------------------

OFFLINE = requests.exceptions.ConnectionError("Failed to establish a new connection: [Errno -3] "
                                              "Temporary failure in name resolution")


@responses.activate
def test_enrich_offline_is_one_line_exit_2(tmp_path):
    responses.add(responses.GET, __import__("re").compile(r"https://api\.openalex\.org/.*"), body=OFFLINE)
    papers = two_good(tmp_path / "papers")
    for name in ("alpha", "beta"):
        path = papers / f"{name}.yaml"
        path.write_text(path.read_text().replace("venue: ICLR 2023\n", "venue: null\n"))
    before = {p.name: p.read_text() for p in papers.iterdir()}
    result = runner.invoke(app, ["enrich", "--write", "--papers", str(papers)])
    one_line_error(result, 2, "cannot reach OpenAlex", "network")
    assert len(result.stderr) < 300
    assert {p.name: p.read_text() for p in papers.iterdir()} == before


@responses.activate
def test_add_checks_the_id_before_the_network(tmp_path):
    papers = two_good(tmp_path / "papers")
    for args, words in ((["--id", "Bad_Id"], "not a slug"), (["--id", "alpha"], "already exists")):
        result = runner.invoke(app, ["add", "2401.00001", *args, "--papers", str(papers)])
        one_line_error(result, 1, words)
    result = runner.invoke(app, ["add", "2401.00001v2", "--papers", str(papers)])
    one_line_error(result, 1, "not an arXiv id")
    assert len(responses.calls) == 0  # no request was made for any of them
    responses.add(responses.GET, __import__("re").compile(r"https://export\.arxiv\.org/.*"), body=OFFLINE)
    result = runner.invoke(app, ["add", "2401.00001", "--id", "fresh", "--papers", str(papers)])
    one_line_error(result, 2, "cannot reach arXiv")
    assert sorted(p.name for p in papers.iterdir()) == ["alpha.yaml", "beta.yaml"]


# -- atlas run: options judged before any model is loaded ------------------------------------------

@pytest.fixture
def no_model_load(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr("reference_impls.common.runner.load_model", refuse)


@pytest.mark.parametrize("args,words", [
    (["rtn", "--calib-samples", "0"], "--calib-samples"),
    (["rtn", "--eval-windows", "0"], "--eval-windows"),
    (["rtn", "--seed", "-1"], "--seed"),
    (["rtn", "--device", "gpu0"], "--device"),
    (["rtn", "--bits", "99"], "--bits"),
    (["rtn", "--bits", "-3"], "--bits"),
    (["rtn", "--group-size", "0"], "--group-size"),
    (["wanda", "--sparsity", "1.5"], "--sparsity"),
    (["wanda", "--prune-n", "2"], "--prune-n"),
    (["wanda", "--prune-n", "4", "--prune-m", "2"], "--prune-n"),
    (["smoothquant", "--alpha", "nan"], "--alpha"),
    (["h2o", "--budget", "0"], "--budget"),
    (["svd", "--ratio", "0"], "--ratio"),
])
def test_run_option_ranges_fail_before_loading(no_model_load, args, words):
    start = time.perf_counter()
    result = runner.invoke(app, ["run", *args])
    one_line_error(result, 1, words)
    assert time.perf_counter() - start < 30


def test_run_bad_save_and_model_paths_fail_at_once(tmp_path, no_model_load, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "file").write_text("x")
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "thesis.tex").write_text("x")
    cases = [(["--save", str(tmp_path / "file")], 1, "not a directory"),
             (["--save", str(tmp_path / "file" / "sub")], 1, "not a directory"),
             (["--save", str(tmp_path / "work")], 1, "holds other files"),
             (["--model", "some-org/some-model"], 2, "HF_HUB_OFFLINE"),
             (["--model", str(tmp_path / "no" / "such")], 2, "no such directory"),
             (["--model", str(tmp_path / "work")], 2, "config.json"),
             (["--model", str(tmp_path / "file")], 2, "is a file")]
    for args, code, words in cases:
        start = time.perf_counter()
        result = runner.invoke(app, ["run", "rtn", *args])
        one_line_error(result, code, words)
        assert time.perf_counter() - start < 5  # checked before the registry is even imported


def test_range_table_accepts_every_registered_default():
    """The shared ranges never refuse a value a method ships as its default or bench grid point."""
    from reference_impls.common import registry
    from reference_impls.common.run_checks import check_options

    for m in registry.all_methods():
        check_options([(m.name, m.defaults())])
        for point in m.bench:
            check_options([(m.name, {**m.defaults(), **point})])


@pytest.mark.slow
def test_run_whose_save_fails_still_prints_the_metrics(tmp_path, monkeypatch):
    import errno

    from transformers import PreTrainedModel

    def disk_full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out"))

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", disk_full)
    result = runner.invoke(app, ["run", "rtn", "--eval-windows", "1", "--json",
                                 "--save", str(tmp_path / "out")])
    no_traceback(result)
    assert result.exit_code == 2 and "No space left" in result.stderr
    record = json.loads(result.stdout)
    assert record["metrics"]["perplexity"] > 1 and record["method"] == "rtn"


# -- Ctrl-C ---------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_ctrl_c_in_index_exits_cleanly(tmp_path):
    papers = two_good(tmp_path / "papers")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for delay in (0.6, 1.5, 3.0, 5.0, 8.0):  # while importing, loading the model, embedding
        proc = subprocess.Popen([sys.executable, "-m", "catalog", "index",
                                 "--papers", str(papers), "--cache-dir", str(tmp_path / f"cache{delay}")],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode in (0, 130), (delay, proc.returncode, err[-500:])
        assert "Traceback" not in err and "terminate called" not in err, (delay, err[-500:])
        assert proc.returncode == 130 or "ok:" in err, err[-300:]


# -- damaged results files (read by atlas memory --method and atlas bench --missing) ------------------

@pytest.mark.parametrize("content", ["[1, 2]", "{", '{"runs": 5}',
                                     '{"runs": [{"model": "causal", "metrics": 3}]}'])
def test_memory_with_a_damaged_results_file(tmp_path, monkeypatch, content):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "rtn.json").write_text(content)
    result = runner.invoke(app, ["memory", "causal", "--method", "rtn"])
    one_line_error(result, 1, "--method rtn")


def test_memory_with_a_config_that_is_not_a_mapping(tmp_path):
    (tmp_path / "config.json").write_text("5")
    result = runner.invoke(app, ["memory", str(tmp_path / "config.json")])
    one_line_error(result, 1, "model_type")


def test_bench_keeps_a_damaged_results_file_aside(tmp_path):
    from reference_impls.common.bench import _previous_results

    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text('{"runs": [{"model": "causal"}]}')
    bad.write_text('{"runs": 5}')
    assert _previous_results(good) == {"runs": [{"model": "causal"}]}
    assert _previous_results(bad) is None
    assert not bad.exists() and (tmp_path / "bad.json.damaged").read_text() == '{"runs": 5}'
