"""Bad input is reported as one line FILE:LINE: FIELD: MESSAGE, exit code 1, nothing on stdout."""

import re
import time

import pytest
from typer.testing import CliRunner

from catalog.cli import app
from catalog.load import load_catalog
from tests.catalog_fixtures import record_text, two_good, write_catalog

runner = CliRunner()


def validate(directory):
    result = runner.invoke(app, ["validate", "--papers", str(directory), "--no-coverage"])
    return result.exit_code, result.stdout, result.stderr


def beta_text(**fields) -> str:
    """The second record of `two_good`, with `fields` changed."""
    return record_text("beta", arxiv="2301.00774", year=2023, **fields)


def single_error(directory):
    code, stdout, stderr = validate(directory)
    assert code == 1
    assert stdout == ""
    lines = [line for line in stderr.splitlines() if re.match(r"^\S+\.yaml:\d+: ", line)]
    assert len(lines) == 1, stderr
    return lines[0]


def test_good_catalog_passes(tmp_path):
    code, _, stderr = validate(two_good(tmp_path))
    assert code == 0, stderr
    assert "2 records valid" in stderr


def test_malformed_yaml(tmp_path):
    two_good(tmp_path)
    unclosed = record_text("alpha").replace("themes: [quantization]", "themes: [quantization")
    (tmp_path / "alpha.yaml").write_text(unclosed)
    line = single_error(tmp_path)
    assert line.startswith(str(tmp_path / "alpha.yaml") + ":")
    assert ": yaml: malformed YAML" in line


def test_duplicate_key_is_refused_not_silently_dropped(tmp_path):
    two_good(tmp_path)
    text = beta_text()
    lines = text.splitlines()
    year = next(i for i, line in enumerate(lines) if line.startswith("year:"))
    (tmp_path / "beta.yaml").write_text("\n".join(lines + ["year: 1999"]) + "\n")
    line = single_error(tmp_path)
    assert f"beta.yaml:{len(lines) + 1}: year: duplicate key (also on line {year + 1})" in line


def test_a_source_or_related_record_listed_twice_is_an_error(tmp_path):
    two_good(tmp_path)
    url = "https://github.com/org/repo"
    (tmp_path / "beta.yaml").write_text(beta_text(extra=f"sources: [{url}, {url}]\n"))
    assert f"sources: a source is listed twice: {url}" in single_error(tmp_path)
    (tmp_path / "beta.yaml").write_text(beta_text(related="[alpha, alpha]"))
    assert "related: a related record is listed twice" in single_error(tmp_path)
    (tmp_path / "beta.yaml").write_text(beta_text().replace("[post-training, 4-bit]", "[4-bit, 4-bit]"))
    assert "tags: a tag is listed twice" in single_error(tmp_path)


def test_missing_required_field(tmp_path):
    two_good(tmp_path)
    (tmp_path / "beta.yaml").write_text(beta_text().replace("authors: [Ada Lovelace, Alan Turing]\n", ""))
    assert single_error(tmp_path).endswith("beta.yaml:1: authors: required field is missing")


def test_wrong_type_names_line(tmp_path):
    two_good(tmp_path)
    (tmp_path / "beta.yaml").write_text(beta_text().replace("year: 2023", "year: twenty"))
    line = single_error(tmp_path)
    assert "beta.yaml:4: year:" in line and "integer" in line


def test_unknown_theme_suggests(tmp_path):
    two_good(tmp_path)
    (tmp_path / "beta.yaml").write_text(beta_text(themes="[quantisation]"))
    line = single_error(tmp_path)
    assert "beta.yaml:9: themes[0]: unknown theme 'quantisation' (did you mean 'quantization'?)" in line


def test_unknown_taxonomy_suggests(tmp_path):
    two_good(tmp_path)
    (tmp_path / "beta.yaml").write_text(beta_text(taxonomy="pruning/unstructed"))
    line = single_error(tmp_path)
    assert ("beta.yaml:10: taxonomy: unknown taxonomy path 'pruning/unstructed' "
            "(did you mean 'pruning/unstructured'?)") in line


def test_duplicate_arxiv_id(tmp_path):
    two_good(tmp_path)
    (tmp_path / "beta.yaml").write_text(record_text("beta", arxiv="2210.17323", year=2022))
    line = single_error(tmp_path)
    assert "beta.yaml:6: arxiv: duplicate arXiv id: same as alpha.yaml" in line


def test_duplicate_title_after_normalization(tmp_path):
    write_catalog(tmp_path, {
        "alpha": record_text("alpha", title="GPTQ: Accurate Quantization"),
        "beta": beta_text(title="gptq -- accurate   QUANTIZATION"),
    })
    line = single_error(tmp_path)
    assert "beta.yaml:2: title: duplicate title (after normalization): same as alpha.yaml" in line


def test_duplicate_id(tmp_path):
    # Two files cannot share a stem, so a duplicate id shows up as an id that differs from its stem.
    two_good(tmp_path)
    (tmp_path / "gamma.yaml").write_text(record_text("alpha", arxiv="2305.00001", year=2023, title="Another"))
    line = single_error(tmp_path)
    assert "gamma.yaml:1: id: 'alpha' must equal the file name stem 'gamma'" in line


def test_malformed_arxiv_id(tmp_path):
    two_good(tmp_path)
    (tmp_path / "beta.yaml").write_text(record_text("beta", arxiv="2301.00774v2", year=2023))
    line = single_error(tmp_path)
    assert "beta.yaml:6: arxiv: '2301.00774v2' is not an arXiv id" in line


def test_unquoted_arxiv_id_is_refused(tmp_path):
    two_good(tmp_path)
    (tmp_path / "beta.yaml").write_text(beta_text().replace('arxiv: "2301.00774"', "arxiv: 2301.10"))
    assert "beta.yaml:6: arxiv: arXiv id must be a quoted string" in single_error(tmp_path)


def test_findings_and_workshop_venues_have_one_spelling(tmp_path):
    two_good(tmp_path)
    good = beta_text()
    for bad, word in (("EMNLP Findings 2023", "Findings"), ("Findings of ACL 2024", "Findings"),
                      ("ICML 2024 Workshop on ES-FoMo", "Workshop")):
        (tmp_path / "beta.yaml").write_text(good.replace("venue: ICLR 2023", f"venue: {bad}"))
        line = single_error(tmp_path)
        assert f"venue: write a {word} acceptance as 'CONF YEAR ({word})'" in line, line
    (tmp_path / "beta.yaml").write_text(good.replace("venue: ICLR 2023", "venue: EMNLP 2023 (Findings)"))
    assert validate(tmp_path)[0] == 0


def test_related_unknown_id(tmp_path):
    two_good(tmp_path)
    (tmp_path / "beta.yaml").write_text(beta_text(related="[alpah]"))
    line = single_error(tmp_path)
    assert "beta.yaml:25: related: unknown record id 'alpah' (did you mean 'alpha'?)" in line


def test_year_inconsistent_with_arxiv(tmp_path):
    two_good(tmp_path)
    (tmp_path / "beta.yaml").write_text(record_text("beta", arxiv="2301.00774", year=2022))
    assert "beta.yaml:4: year: 2022 does not match the arXiv id 2301.00774" in single_error(tmp_path)


def test_non_utf8_file(tmp_path):
    two_good(tmp_path)
    text = beta_text().replace("Ada Lovelace", "Ada L\xf6velace")
    (tmp_path / "beta.yaml").write_bytes(text.encode("latin-1"))
    line = single_error(tmp_path)
    assert "beta.yaml:3: file: not valid UTF-8 (byte 0xf6" in line


def test_empty_file(tmp_path):
    two_good(tmp_path)
    (tmp_path / "beta.yaml").write_text("  \n")
    assert "beta.yaml:1: file: empty file" in single_error(tmp_path)


def test_unknown_field(tmp_path):
    two_good(tmp_path)
    (tmp_path / "beta.yaml").write_text(beta_text(extra="summry: x\n"))
    assert "beta.yaml:26: summry: unknown field" in single_error(tmp_path)


def test_summary_too_short(tmp_path):
    two_good(tmp_path)
    text = beta_text()
    start, end = text.index("summary:"), text.index("related:")
    short = "summary:\n  problem: Too short.\n  method: Short.\n  results: None.\n  limitations: Few words.\n"
    (tmp_path / "beta.yaml").write_text(text[:start] + short + text[end:])
    line = single_error(tmp_path)
    assert "beta.yaml:12: summary: 6 words; a summary has 80-220 words" in line


def test_yaml_bomb_is_refused_quickly(tmp_path):
    two_good(tmp_path)
    bomb = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i, name in enumerate("bcdefghi"):
        prev = "abcdefghi"[i]
        nine_refs = ",".join([f"*{prev}"] * 9)  # each level holds nine copies of the one before
        bomb.append(f"{name}: &{name} [{nine_refs}]")
    (tmp_path / "beta.yaml").write_text("\n".join(bomb) + "\n")
    start = time.perf_counter()
    line = single_error(tmp_path)
    assert time.perf_counter() - start < 2.0
    assert "beta.yaml:2: yaml: malformed YAML: YAML aliases (*name) are not allowed" in line


def test_unknown_tag_suggests(tmp_path):
    two_good(tmp_path)
    (tmp_path / "beta.yaml").write_text(beta_text().replace("[post-training, 4-bit]",
                                                            "[post-training, 4bit]"))
    assert "beta.yaml:11: tags[1]: unknown tag '4bit' (did you mean '4-bit'?)" in single_error(tmp_path)


def test_missing_catalog_dir(tmp_path):
    result = runner.invoke(app, ["validate", "--papers", str(tmp_path / "nope")])
    assert result.exit_code == 1
    assert "catalog directory not found" in result.stderr


def test_coverage_gate_reports_unused_leaves(tmp_path):
    catalog = load_catalog(two_good(tmp_path), coverage=True)
    assert any("leaf 'pruning/unstructured' has no paper" in str(e) for e in catalog.errors)


@pytest.mark.parametrize("env", [True, False])
def test_catalog_location_from_env_or_option(tmp_path, monkeypatch, env):
    two_good(tmp_path)
    if env:
        monkeypatch.setenv("ATLAS_PAPERS", str(tmp_path))
        args = ["list", "--json"]
    else:
        monkeypatch.delenv("ATLAS_PAPERS", raising=False)
        args = ["list", "--json", "--papers", str(tmp_path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.stderr
    assert {r["id"] for r in __import__("json").loads(result.stdout)} == {"alpha", "beta"}


def test_year_may_precede_arxiv_when_published_first(tmp_path):
    # EasyQuant: EMNLP 2023 proceedings (Dec 2023) before its arXiv version 2403.02775
    write_catalog(tmp_path, {"alpha": record_text("alpha", arxiv="2403.02775", year=2023)})
    assert validate(tmp_path)[0] == 0


def test_impl_module_must_exist(tmp_path):
    two_good(tmp_path)
    extra = "impl:\n  module: reference_impls.quantization.gptqq\n  fidelity: exact\n"
    (tmp_path / "beta.yaml").write_text(beta_text(extra=extra))
    line = single_error(tmp_path)
    assert "beta.yaml:26: impl: module 'reference_impls.quantization.gptqq' cannot be imported" in line
    (tmp_path / "beta.yaml").write_text(beta_text(extra=extra.replace("gptqq", "gptq")))
    assert validate(tmp_path)[0] == 0


def invalid_year_catalog(directory):
    two_good(directory)
    (directory / "beta.yaml").write_text(record_text("beta", year=1066))
    return directory


def test_encoder_evaluation_reads_records_through_catalog_load(tmp_path):
    from catalog.load import CatalogInvalid
    from reference_impls.common.data import encoder_eval_texts

    docs, _, n_records = encoder_eval_texts(two_good(tmp_path))
    assert n_records == 2 and docs[0].startswith("A test paper about alpha Rounding every weight")
    with pytest.raises(CatalogInvalid) as caught:  # no second YAML reader that accepts what load refuses
        encoder_eval_texts(invalid_year_catalog(tmp_path))
    assert re.fullmatch(rf"{re.escape(str(tmp_path / 'beta.yaml'))}:4: year: .+", str(caught.value))


def test_atlas_run_on_an_invalid_catalog_prints_one_error_line(tmp_path, monkeypatch):
    from reference_impls.common import runner as method_runner
    from reference_impls.common.data import encoder_eval_texts

    def run_method(method, *, papers_dir, **_):  # the model is not needed to reach the catalog
        encoder_eval_texts(papers_dir)

    monkeypatch.setattr(method_runner, "run_method", run_method)
    papers = invalid_year_catalog(tmp_path)
    result = runner.invoke(app, ["run", "rtn", "--model", "encoder", "--papers", str(papers)])
    assert result.exit_code == 1 and result.stdout == ""
    assert re.fullmatch(rf"{re.escape(str(tmp_path / 'beta.yaml'))}:4: year: .+", result.stderr.strip())
