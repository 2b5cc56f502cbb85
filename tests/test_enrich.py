"""atlas add / enrich against recorded arXiv and OpenAlex responses (tests/fixtures, see SOURCES.md)."""

import json
import re
from pathlib import Path

import responses
from typer.testing import CliRunner

from catalog.cli import app
from catalog.enrich import set_venue, slug_for
from tests.catalog_fixtures import two_good

FIXTURES = Path(__file__).parent / "fixtures"
ARXIV = re.compile(r"https://export\.arxiv\.org/api/query.*")
runner = CliRunner()


def arxiv_body(name):
    return json.loads((FIXTURES / name).read_text())["body"].encode("latin-1")


@responses.activate
def test_add_drafts_a_record_from_arxiv(tmp_path):
    responses.add(responses.GET, ARXIV, body=arxiv_body("arxiv_id_1605.08386.json"))
    papers = two_good(tmp_path)
    result = runner.invoke(app, ["add", "1605.08386", "--papers", str(papers)])
    assert result.exit_code == 0, result.stderr
    text = (papers / "heat-bath-random-walks.yaml").read_text()
    assert 'title: Heat-bath random walks with Markov bases' in text
    assert 'arxiv: "1605.08386"' in text and "year: 2016" in text
    # the draft is deliberately incomplete: validation names what is left to write
    check = runner.invoke(app, ["validate", "--papers", str(papers), "--no-coverage"])
    assert check.exit_code == 1 and "heat-bath-random-walks.yaml" in check.stderr


@responses.activate
def test_add_unknown_id_writes_nothing(tmp_path):
    responses.add(responses.GET, ARXIV, body=arxiv_body("arxiv_id_0000.0000_empty.json"))
    papers = two_good(tmp_path)
    result = runner.invoke(app, ["add", "0000.0000", "--papers", str(papers)])
    assert result.exit_code == 1 and "arXiv has no paper 0000.0000" in result.stderr
    assert sorted(p.name for p in papers.iterdir()) == ["alpha.yaml", "beta.yaml"]


def test_add_refuses_duplicates_and_bad_ids(tmp_path):
    papers = two_good(tmp_path)
    result = runner.invoke(app, ["add", "2210.17323", "--papers", str(papers)])
    assert result.exit_code == 1 and "already in the catalog as 'alpha'" in result.stderr
    result = runner.invoke(app, ["add", "2210.17323v2", "--papers", str(papers)])
    assert result.exit_code == 1 and "not an arXiv id" in result.stderr


@responses.activate
def test_enrich_reads_the_venue_from_openalex(tmp_path):
    body = (FIXTURES / "openalex_work_W2741809807.json").read_text()
    responses.add(responses.GET, re.compile(r"https://api\.openalex\.org/works/.*"), body=body)
    papers = two_good(tmp_path)
    beta = papers / "beta.yaml"
    beta.write_text(beta.read_text().replace("venue: ICLR 2023", "venue: null"))
    result = runner.invoke(
        app, ["enrich", "beta", "--write", "--papers", str(papers)], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.stderr
    assert "PeerJ 2018" in result.stdout
    assert "venue: PeerJ 2018\n" in (papers / "beta.yaml").read_text()


def test_helpers():
    assert slug_for("GPTQ: Accurate Post-Training Quantization") == "gptq"
    assert set_venue("id: x\nvenue: null\nyear: 1\n", "ICLR 2024") == "id: x\nvenue: ICLR 2024\nyear: 1\n"
