"""Exports parse back with independent parsers and keep every record's facts."""


import json

import bibtexparser
from bibtexparser.middlewares import LatexDecodingMiddleware
from typer.testing import CliRunner

from catalog.cli import app
from catalog.export import citation_keys, to_csl
from catalog.load import load_records
from tests.catalog_fixtures import record_text, write_catalog

runner = CliRunner()
NASTY = "Q&A: 100% of {LLaMA}_2 #1 costs $5 ~ 2^3 for M\u00fcller\u2019s \u0141ukasz \u2014 \\ok"


def nasty_catalog(tmp_path):
    beta = record_text("beta", arxiv="2301.00774", year=2023,
                       title="GPTQ: Accurate Post-Training Quantization")
    gamma = record_text("gamma", arxiv="2301.00775", year=2023, title="Another Paper")
    return write_catalog(tmp_path, {
        "alpha": record_text("alpha", title=NASTY.replace("\\", "\\\\")),
        "beta": beta.replace("venue: ICLR 2023", "venue: null"),
        "gamma": gamma.replace("venue: ICLR 2023", "venue: TACL 2024"),
    })


def export(tmp_path, fmt):
    result = runner.invoke(app, ["export", "--format", fmt, "--papers", str(nasty_catalog(tmp_path))])
    assert result.exit_code == 0, result.stderr
    return result.stdout


def test_bibtex_round_trips_special_characters(tmp_path):
    text = export(tmp_path, "bibtex")
    library = bibtexparser.parse_string(text, append_middleware=[LatexDecodingMiddleware()])
    assert not library.failed_blocks
    entries = {e.key: e for e in library.entries}
    assert set(entries) == {"lovelace2022qa", "lovelace2023gptq", "lovelace2023another"}
    title = entries["lovelace2022qa"].fields_dict["title"].value
    for fragment in ("Q&A", "100%", "_2", "#1", "$5", "M\u00fcller", "\u0141ukasz"):
        assert fragment in title, (fragment, title)
    raw = text.split("@", 2)[1] if "lovelace2022qa" in text.split("@", 2)[1] else text
    assert "\\&" in raw and "\\%" in raw and "\\#" in raw and "\\$" in raw
    assert entries["lovelace2023gptq"].entry_type == "misc"
    assert entries["lovelace2023another"].entry_type == "article"
    assert entries["lovelace2022qa"].entry_type == "inproceedings"
    assert entries["lovelace2022qa"].fields_dict["year"].value == "2023"  # the venue's year
    assert entries["lovelace2022qa"].fields_dict["author"].value == "Lovelace, Ada and Turing, Alan"


def test_csljson_items_follow_the_csl_schema(tmp_path):
    items = json.loads(export(tmp_path, "csljson"))
    assert isinstance(items, list) and len(items) == 3
    allowed_types = {"article", "article-journal", "paper-conference"}
    for item in items:
        assert set(item) >= {"id", "type", "title", "author", "issued", "URL"}
        assert item["type"] in allowed_types
        assert all(set(a) == {"family", "given"} for a in item["author"])
        assert isinstance(item["issued"]["date-parts"][0][0], int)
        assert item["DOI"].startswith("10.48550/arXiv.")
    by_id = {i["id"]: i for i in items}
    assert by_id["lovelace2022qa"]["title"] == NASTY
    assert by_id["lovelace2023gptq"]["publisher"] == "arXiv"


def test_json_export_is_the_records(tmp_path):
    data = json.loads(export(tmp_path, "json"))
    assert [r["id"] for r in data] == ["alpha", "beta", "gamma"]
    assert data[0]["summary"]["problem"].startswith("Rounding every weight")


def test_citation_keys_are_stable_and_unique(tmp_path):
    records = load_records(write_catalog(tmp_path, {
        "a": record_text("a", title="Same Start"),
        "b": record_text("b", arxiv="2210.17324", title="Same Start again"),
    }))
    keys = citation_keys(records)
    assert keys == {"a": "lovelace2022samea", "b": "lovelace2022sameb"}
    assert citation_keys(list(reversed(records))) == keys
    assert [i["id"] for i in to_csl(records)] == ["lovelace2022samea", "lovelace2022sameb"]


def test_export_bad_format_and_theme(tmp_path):
    papers = str(nasty_catalog(tmp_path))
    result = runner.invoke(app, ["export", "--format", "bibtx", "--papers", papers])
    assert result.exit_code == 1 and result.stdout == ""
    assert "did you mean 'bibtex'" in result.stderr
    result = runner.invoke(app, ["export", "--format", "json", "--theme", "pruningg", "--papers", papers])
    assert result.exit_code == 1 and "did you mean 'pruning'" in result.stderr


def test_export_refuses_an_invalid_catalog_and_writes_nothing(tmp_path):
    papers = nasty_catalog(tmp_path / "papers")
    (papers / "beta.yaml").write_text("id: beta\n")
    target = tmp_path / "out.bib"
    result = runner.invoke(app, ["export", "--format", "bibtex", "--papers", str(papers), "-o", str(target)])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert not target.exists()
    assert "beta.yaml:1: authors: required field is missing" in result.stderr
