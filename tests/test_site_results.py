"""Results page, Pareto plots, same-budget comparisons and running-code coverage (issue 21 §3-4).

Oracles: hand-written result files whose rows we know, a hand-checked Pareto front, hostile strings
that must come out escaped, and catalogs built to break each impl rule.
"""

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from catalog import validate as validate_mod
from catalog.cli import app
from catalog.coverage import coverage
from catalog.load import load_catalog
from catalog.results import Run, load_runs, same_budget
from catalog.site_plots import Point, make_plots, pareto_front, scatter_svg
from catalog.site_results import family_comparison, results_page, results_table_html
from tests.catalog_fixtures import record_text, write_catalog

FAMILIES = {"gptq": "quantization", "rtn": "quantization", "awq": "quantization", "wanda": "pruning",
            "sparsegpt": "pruning", "h2o": "kv_cache", "kv-int": "kv_cache"}


def run(method, options, ppl, *, model="causal", bits=4.156, **metrics):
    return {"method": method, "model": model, "options": options, "bits_per_weight": bits, "params": 1000,
            "time_s": 1.0, "metrics": {"perplexity": ppl, "perplexity_fp": 45.0, **metrics}}


@pytest.fixture
def results_dir(tmp_path):
    d = tmp_path / "results"
    d.mkdir()
    (d / "gptq.json").write_text(json.dumps({"method": "gptq", "papers": ["gptq"], "runs": [
        run("gptq", {"bits": 4, "group_size": 128}, 45.7),
        run("gptq", {"bits": 3, "group_size": 128}, 46.6, bits=3.148)]}))
    (d / "rtn.json").write_text(json.dumps({"method": "rtn", "papers": ["rtn-paper"], "runs": [
        run("rtn", {"bits": 4, "group_size": 128, "sym": False}, 46.2),
        run("rtn", {"bits": 4, "group_size": -1, "sym": False}, 46.4, bits=4.06)]}))
    (d / "awq.json").write_text(json.dumps([run("awq", {"bits": 4, "group_size": 128}, 45.9)]))  # a bare list
    (d / "sparsegpt.json").write_text(json.dumps({"method": "sparsegpt", "papers": ["sparsegpt"], "runs": [
        run("sparsegpt", {"sparsity": 0.5, "prune_n": 0, "prune_m": 0, "bits": 0}, 50.0, bits=9.0,
            sparsity=0.5),
        run("sparsegpt", {"sparsity": 0.5, "prune_n": 0, "prune_m": 0, "bits": 4, "group_size": 128}, 51.0,
            bits=5.2, sparsity=0.5)]}))
    (d / "wanda.json").write_text(json.dumps({"method": "wanda", "papers": ["wanda"], "runs": [
        run("wanda", {"sparsity": 0.5, "prune_n": 0, "prune_m": 0}, 50.8, bits=9.0, sparsity=0.5,
            brand_new_metric=3.5, tasks={"code-exact-match": 0.41}, tasks_fp={"code-exact-match": 0.47})]}))
    (d / "h2o.json").write_text(json.dumps({"method": "h2o", "papers": ["h2o"], "runs": [
        run("h2o", {"budget": 64}, 45.0, bits=16.0, perplexity_kv=82.5, perplexity_kv_full=79.9,
            kv_bytes_ratio=0.25)]}))
    (d / "kv-int.json").write_text(json.dumps({"method": "kv-int", "runs": [
        run("kv-int", {"bits": 4, "group_size": 128}, 45.0, bits=16.0, perplexity_kv=80.3,
            perplexity_kv_full=79.9)]}))
    (d / "compositions.json").write_text(json.dumps({"runs": [
        {**run("wanda+gptq", {"sparsity": 0.5, "bits": 4}, 53.0, bits=5.0),
         "stages": [{"method": "wanda"}, {"method": "gptq"}]}]}))
    (d / "search.json").write_text(json.dumps({"records": 3, "quality": {}}))  # no runs: skipped
    (d / "task_agreement.json").write_text(json.dumps({"rows": [  # tasks of a re-run, merged into the run
        {"method": "gptq", "options": {"group_size": 128, "bits": 4}, "tasks": {"code_line": 0.3},
         "tasks_fp": {"code_line": 0.32}},
        {"method": "gptq", "options": {"bits": 5}, "tasks": {"code_line": 0.9}}]}))  # matches no run
    (d / "broken.json").write_text("{not json")
    return d


def test_load_runs_reads_every_shape_and_skips_the_rest(results_dir):
    runs = load_runs(results_dir, FAMILIES)
    assert sorted({r.method for r in runs}) == ["awq", "gptq", "h2o", "kv-int", "rtn", "sparsegpt", "wanda",
                                                "wanda+gptq"]
    assert len(runs) == 11
    combo = next(r for r in runs if r.stages)
    assert combo.family == "combination" and combo.stages == ("wanda", "gptq")
    assert combo.papers == ("wanda", "gptq")  # the stages' papers, from their own files
    gptq4 = next(r for r in runs if r.method == "gptq" and r.options["bits"] == 4)
    assert gptq4.tasks == {"code_line": 0.3} and gptq4.tasks_fp == {"code_line": 0.32}
    assert not any(r.tasks.get("code_line") == 0.9 for r in runs)
    wanda = next(r for r in runs if r.method == "wanda")
    assert wanda.tasks == {"code-exact-match": 0.41} and wanda.metrics["brand_new_metric"] == 3.5


def test_quality_is_the_figure_the_method_changes(results_dir):
    runs = {r.method: r for r in load_runs(results_dir, FAMILIES)}
    assert runs["h2o"].quality[1:] == (82.5, 79.9)  # KV policy: perplexity through the cache
    assert runs["awq"].quality[1:] == (45.9, 45.0)
    assert runs["awq"].size_mb == pytest.approx(4.156 * 1000 / 8 / 1e6)


def test_a_model_trained_from_scratch_is_compared_with_its_own_fp_peer():
    from catalog.site_plots import _same_model

    metrics = {"perplexity": 1025.5, "perplexity_fp": 45.4, "perplexity_fp_same_steps": 998.3}
    bitnet = Run(method="bitnet", family="qat", model="causal", options={}, metrics=metrics)
    rtn = Run(method="rtn", family="quantization", model="causal", options={},
              metrics={"perplexity": 46.2, "perplexity_fp": 45.4})
    assert bitnet.quality[1:] == (1025.5, 998.3)  # not the project's pretrained model (45.4)
    assert _same_model([bitnet, rtn, rtn]) == [rtn, rtn]  # not drawn on the shared model's axes


def test_same_budget_pairs_gptq_with_rtn_and_awq_at_4bit_g128(results_dir):
    runs = load_runs(results_dir, FAMILIES)
    g4 = next(r for r in runs if r.method == "gptq" and r.options["bits"] == 4)
    assert sorted(r.method for r in same_budget(g4, runs)) == ["awq", "rtn"]  # not rtn g=-1, not kv-int 4-bit
    sg = [r for r in runs if r.method == "sparsegpt"]
    dense_mask = next(r for r in sg if r.options["bits"] == 0)  # bits=0 means no joint quantization
    assert [r.method for r in same_budget(dense_mask, runs)] == ["wanda"]
    joint = next(r for r in sg if r.options["bits"] == 4)
    assert same_budget(joint, runs) == []


def test_paper_page_comparison_lists_the_family_at_the_same_budget(results_dir):
    runs = load_runs(results_dir, FAMILIES)
    lines = family_comparison("gptq", runs, {"gptq", "rtn-paper"})
    table = [line for line in lines if line.startswith("| bits=4, group\\_size=128")]
    assert [re.search(r"\| ([^|]*) \| [\d.]+ \|", line).group(1) for line in table] == [
        "**gptq**", "awq", "[rtn](rtn-paper.md)"]  # own row first, then best first; known papers linked
    assert "+1.6" in table[0]  # Δ % of 45.7 against 45.0
    assert not any("bits=3" in line for line in lines)  # no other method at 3 bits: no row


def test_pareto_front_hand_case():
    pts = [Point(x, y, "s", "m", "t") for x, y in [(3, 50), (4, 46), (4, 47), (5, 46.5), (8, 45), (2, 60)]]
    assert [(p.x, p.y) for p in pareto_front(pts)] == [(2, 60), (3, 50), (4, 46), (8, 45)]
    sparsity = [Point(x, y, "s", "m", "t") for x, y in [(0.5, 50), (0.7, 60), (0.6, 70)]]
    assert [(p.x, p.y) for p in pareto_front(sparsity, min_x=False)] == [(0.7, 60), (0.5, 50)]


def test_table_escapes_hostile_text_and_has_one_row_per_run(results_dir):
    runs = load_runs(results_dir, FAMILIES)
    evil = Run(method='<script>alert(1)</script>', family='"><img src=x onerror=alert(1)>', model="causal",
               options={"bits": "<b>4</b>"}, metrics={"perplexity": 1.0}, papers=("x\"onmouseover=y",))
    html = results_table_html([*runs, evil], known={"gptq", 'x"onmouseover=y'})
    assert "<script>" not in html and "<img" not in html and "<b>4" not in html
    assert "&lt;script&gt;" in html and 'onmouseover=y"' not in html
    assert html.count("<tr data-family") == len(runs) + 1
    assert "task: code-exact-match" in html  # task columns appear when runs report tasks
    assert 'title="uncompressed 0.470">0.410</td>' in html


def test_svg_points_are_titled_links():
    pts = [Point(3.0, 50.0, "gptq", "gptq", "gptq <3 & co", url="../papers/gptq/"),
           Point(4.0, 46.0, "rtn", "rtn", "rtn", url=None)]
    svg = scatter_svg("t", pts, xlabel="x", ylabel="y")
    assert svg.startswith("<svg") and "<?xml" not in svg
    assert "<title>gptq &lt;3 &amp; co</title>" in svg and "<title>rtn</title>" in svg
    assert svg.count('target="_top"') == 1 and "../papers/gptq/" in svg


def test_make_plots_and_page(results_dir):
    runs = load_runs(results_dir, FAMILIES)
    plots = make_plots(runs, {"gptq", "wanda"})
    titles = [t for t, _, _ in plots]
    assert "Bits per weight vs perplexity, all weight compression" in titles
    assert "Combinations: bits per weight vs perplexity" in titles
    page = results_page(runs, {"gptq"}, plots)
    assert page.count("<svg") == len(plots) and "11 runs" in page


# -- running-code coverage and the impl rules -------------------------------------------------------

IMPL_GPTQ = "impl:\n  module: reference_impls.quantization.gptq\n  fidelity: exact\n"


def catalog_with(tmp_path, extra_by_id: dict[str, tuple[str, str]]):
    arxivs = ["2210.17323", "2301.00774", "2306.00978", "2305.14314", "2309.05516"]
    records = {rid: record_text(rid, arxiv=arxiv, year=2000 + int(arxiv[:2]), themes=themes, extra=extra)
               for (rid, (themes, extra)), arxiv in zip(extra_by_id.items(), arxivs, strict=False)}
    return write_catalog(tmp_path / "papers", records)


def errors_of(directory):
    return [str(e) for e in load_catalog(directory).errors]


def test_impl_rules(tmp_path):
    d = catalog_with(tmp_path, {
        "own": ("[quantization]", IMPL_GPTQ),
        "fam-no-note": ("[quantization]", "impl:\n  module: reference_impls.quantization.gptq\n"
                                          "  fidelity: family\n"),
        "none-method": ("[pruning]", "impl:\n  none: nothing to run\n"),
        "survey": ("[compression]", "impl:\n  covers: [gptq, not-a-method]\n"),
        "wrong-name": ("[quantization]", IMPL_GPTQ + "  method: rtn\n"),
    })
    errs = errors_of(d)
    assert any("fam-no-note.yaml" in e and "impl.note" in e for e in errs)
    assert any("none-method.yaml" in e and "impl.none is for surveys" in e for e in errs)
    assert any("survey.yaml" in e and "'not-a-method' is not a registered method" in e for e in errs)
    assert any("wrong-name.yaml" in e and "impl.method 'rtn'" in e for e in errs)
    assert not any("own.yaml" in e for e in errs)


def test_missing_impl_is_a_catalog_gate(tmp_path, monkeypatch):
    """A method-theme record without impl fails `atlas validate` (a catalog-wide gate, like empty taxonomy
    leaves) once REQUIRE_IMPL is on; before, it is counted in a warning."""
    d = catalog_with(tmp_path, {"bare": ("[pruning]", ""), "agent": ("[agents]", "")})
    gate = lambda: [str(e) for e in load_catalog(d, coverage=True).errors if ": impl:" in str(e)]  # noqa: E731
    assert errors_of(d) == []  # record-level checks (what the site and search load) never require it
    monkeypatch.setattr(validate_mod, "REQUIRE_IMPL", False)
    assert gate() == []
    result = CliRunner().invoke(app, ["validate", "--papers", str(d), "--no-coverage"])
    assert result.exit_code == 0
    assert "1 record(s) of a method theme have no impl (pruning 1)" in result.stderr
    monkeypatch.setattr(validate_mod, "REQUIRE_IMPL", True)
    errs = gate()
    assert len(errs) == 1 and "bare.yaml" in errs[0]  # agents is not a method theme


def test_coverage_counts_each_class(tmp_path):
    d = catalog_with(tmp_path, {
        "own": ("[quantization]", IMPL_GPTQ),
        "fam": ("[quantization, pruning]", "impl:\n  module: reference_impls.quantization.gptq\n"
                                           "  fidelity: family\n  note: theirs adds outlier columns\n"),
        "bench": ("[benchmarks, quantization]", "impl:\n  none: a leaderboard; nothing to run\n"),
        "bare": ("[pruning]", ""),
    })
    records = load_catalog(d).records
    table = coverage(records)
    assert table["quantization"] == {"records": 3, "own": 1, "family": 1, "covers": 0, "none": 1,
                                     "missing": 0}
    assert table["pruning"] == {"records": 2, "own": 0, "family": 1, "covers": 0, "none": 0, "missing": 1}
    assert table["all"]["records"] == 4
    out = CliRunner().invoke(app, ["stats", "--json", "--papers", str(d)]).stdout
    assert json.loads(out)["impl_coverage"]["pruning"]["missing"] == 1


def test_real_catalog_links_resolve():
    """Every impl.method and impl.covers name of the real catalog is registered (text scan = registry)."""
    from reference_impls.common.registry import all_methods

    scanned = validate_mod.registered_names()
    registry = {m.name: m.module for m in all_methods()}
    assert scanned == registry
    errs = [e for e in errors_of(Path(__file__).resolve().parents[1] / "papers") if ": impl:" in e]
    assert not errs, errs[:5]


def test_plots_are_cached_by_content(results_dir, tmp_path, monkeypatch):
    import catalog.site_plots as site_plots

    runs = load_runs(results_dir, FAMILIES)
    first = site_plots.cached_plots(runs, {"gptq"}, tmp_path / "cache")
    monkeypatch.setattr(site_plots, "make_plots", lambda *a, **k: pytest.fail("redrawn"))
    assert site_plots.cached_plots(runs, {"gptq"}, tmp_path / "cache") == first
    runs[0].metrics["perplexity"] += 1.0  # a changed result is drawn again
    with pytest.raises(pytest.fail.Exception):
        site_plots.cached_plots(runs, {"gptq"}, tmp_path / "cache")


def test_setting_names_budget_options_and_drops_off_values():
    combo = Run(method="sparsegpt+gptq", family="combination", model="causal", metrics={},
                options={"sparsity": 0.5, "prune_n": 0, "prune_m": 0, "sparsegpt.bits": 0,
                         "sparsegpt.group_size": -1, "gptq.bits": 4, "gptq.group_size": 128, "damp": 0.01})
    assert combo.setting() == "gptq.bits=4, gptq.group_size=128, sparsity=0.5"
    nm = Run(method="wanda", family="pruning", model="causal", metrics={},
             options={"sparsity": 0.5, "prune_n": 2, "prune_m": 4})
    assert nm.setting() == "sparsity=0.5, prune_n=2, prune_m=4" and nm.budget()[-1] == ("n:m", "2:4")


def test_weight_plots_keep_runs_of_the_shared_model(results_dir):
    from catalog.site_plots import _plot_weights

    runs = load_runs(results_dir, FAMILIES)
    other = Run(method="bitnet", family="quantization", model="causal", options={}, bits_per_weight=1.6,
                metrics={"perplexity": 1025.0, "perplexity_fp": 998.0})  # a model trained from scratch
    points, _ = _plot_weights([*runs, other], set(), families=("quantization",), slug="t")
    assert points and not any(p.label == "bitnet" for p in points)


def test_far_outliers_are_counted_not_drawn():
    pts = [Point(3.0, 50.0, "a", "a", "a"), Point(4.0, 46.0, "b", "b", "b"),
           Point(2.0, 64807.0, "c", "c", "c")]
    svg = scatter_svg("o", pts, xlabel="x", ylabel="y", refs=((45.0, "uncompressed"),))
    assert "<title>c</title>" not in svg and "<title>a</title>" in svg
    assert "1 run(s) above 180 not shown" in svg


def test_paper_page_table_shows_task_accuracy_runs():
    from catalog.site import results_table

    row = {"model": "causal", "options": {"digits": 2}, "bits_per_weight": 16.0, "time_s": 1.0,
           "metrics": {"task_accuracy": 0.79, "task_accuracy_baseline": 0.086, "task_accuracy_teacher": 1.0,
                       "perplexity": 45.36, "perplexity_fp": 45.36}}
    (line,) = [x for x in results_table([row]) if x.startswith("| causal")]
    assert "0\\.790 \\(baseline 0\\.086\\)" in line and "45" not in line  # not the untouched model's ppl


def test_a_black_box_run_shows_its_student_not_the_untouched_model(tmp_path):
    row = {"method": "step-by-step", "model": "causal", "options": {}, "bits_per_weight": 16.0,
           "metrics": {"task_accuracy": 0.1, "task_accuracy_teacher": 1.0, "student_params": 108160,
                       "weight_bytes": 13244928, "perplexity": 45.36}}
    (tmp_path / "step-by-step.json").write_text(json.dumps({"method": "step-by-step", "runs": [row]}))
    (run,) = load_runs(tmp_path, {"step-by-step": "distillation"})
    assert run.bits_per_weight is None and run.size_mb == pytest.approx(108160 * 4 / 1e6)
    assert run.perplexity is None
