"""scripts/list_coverage.py on a hand-written list (offline: no mirror, no network)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "list_coverage.py"

LIST = """\
# My List
Intro text with a [link](https://example.org/intro).

## Contents
- [Quantization](#quantization)

## Quantization

- Alpha Quant: Quantizing Things Well <br> ICML 2030 [[Paper]](https://arxiv.org/abs/3001.00001) \
[[Code]](https://github.com/a/alpha)

- Beta Rounding for Models <br> Arxiv 2030 [[Paper]](https://arxiv.org/pdf/3001.00002v2.pdf)

- Alpha Quant again, listed twice [[Paper]](https://arxiv.org/abs/3001.00001)

| Title & Authors | Links |
|:--|:--:|
|[![Star](https://img.shields.io/github/stars/c/gamma.svg)](https://github.com/c/gamma)<br>\
[Gamma: A Title Only Known By Name](https://openreview.net/forum?id=xyz) <br> Ann Author \
| [Paper](https://openreview.net/forum?id=xyz) |

### Pruning and Sparsity

- Delta Pruner: Removing Weights
    - Author: Someone Else
    - Link: https://arxiv.org/pdf/3002.00004.pdf
    - Code: https://github.com/d/delta

- Alpha Quant: Quantizing Things Well <br> [[Paper]](https://arxiv.org/abs/3001.00001)

## Tools

- SomeTool: a library [[Code]](https://github.com/e/tool)
"""


@pytest.fixture(scope="module")
def lc():
    spec = importlib.util.spec_from_file_location("list_coverage", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["list_coverage"] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def papers(tmp_path: Path) -> Path:
    folder = tmp_path / "papers"
    folder.mkdir()
    (folder / "alpha.yaml").write_text('id: alpha\ntitle: "Alpha Quant: a Different Latest Title"\n'
                                       'arxiv: "3001.00001"\n')
    (folder / "gamma.yaml").write_text('id: gamma\ntitle: "Gamma: a title only known by name"\narxiv: null\n')
    (folder / "broken.yaml").write_text("id: [unclosed\n")
    return folder


def test_parse_sections_and_entries(lc):
    sections = {s.name: s for s in lc.parse_markdown(LIST)}
    assert list(sections) == ["Quantization", "Pruning and Sparsity"]  # no paper in intro/contents/tools
    quant = sections["Quantization"].entries
    assert [(e.arxiv, e.title) for e in quant] == [
        ("3001.00001", "Alpha Quant: Quantizing Things Well"),
        ("3001.00002", "Beta Rounding for Models"),
        ("3001.00001", "Alpha Quant again, listed twice"),
        (None, "Gamma: A Title Only Known By Name"),
    ]
    prune = sections["Pruning and Sparsity"].entries
    assert (prune[0].arxiv, prune[0].title) == ("3002.00004", "Delta Pruner: Removing Weights")


def test_coverage_matches_arxiv_then_title(lc, papers, tmp_path):
    md = tmp_path / "list.md"
    md.write_text(LIST)
    name, sections = lc.load_list(str(md), tmp_path)
    report = lc.coverage(name, sections, lc.load_catalog_keys(papers))
    rows = {r["section"]: r for r in report["sections"]}
    assert (rows["Quantization"]["papers"], rows["Quantization"]["covered"]) == (3, 2)  # duplicate once
    assert rows["Quantization"]["percent"] == pytest.approx(66.7)
    assert [m["arxiv"] for m in rows["Quantization"]["missing"]] == ["3001.00002"]
    assert (rows["Pruning and Sparsity"]["papers"], rows["Pruning and Sparsity"]["covered"]) == (2, 1)
    assert (report["papers"], report["covered"]) == (4, 2)  # alpha counted once across sections


def test_cli_table_missing_and_json(lc, papers, tmp_path, capsys):
    md = tmp_path / "list.md"
    md.write_text(LIST)
    assert lc.main([str(md), "--papers", str(papers), "--missing", "prun"]) == 0
    out = capsys.readouterr().out
    assert "Quantization" in out and "66.7" in out and "all sections" in out
    assert "missing from" in out and "3002.00004  Delta Pruner: Removing Weights" in out
    assert "Beta Rounding" not in out  # --missing names only the matching sections
    assert lc.main([str(md), "--papers", str(papers), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data[0]["covered"] == 2 and "missing" not in data[0]["sections"][0]


def test_unknown_source_is_a_clear_error(lc, tmp_path):
    with pytest.raises(SystemExit, match="cannot read"):
        lc.main([str(tmp_path / "nope.md"), "--papers", str(tmp_path)])
