"""The command line as a user meets it: version, help with examples, JSON-only stdout."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from catalog import __version__
from catalog.cli import app
from tests.catalog_fixtures import two_good

runner = CliRunner()
ATLAS = str(Path(sys.executable).with_name("atlas"))


def test_version():
    proc = subprocess.run([ATLAS, "--version"], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == f"atlas {__version__}"


def command_names():
    import typer.main

    return sorted(typer.main.get_command(app).commands)


@pytest.mark.parametrize("name", command_names())
def test_every_command_has_help_with_an_example(name):
    result = runner.invoke(app, [name, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "Example" in result.stdout, f"`atlas {name} --help` shows no example"


@pytest.mark.parametrize("args", [["list", "--json"], ["show", "alpha", "--json"], ["stats", "--json"],
                                  ["export", "--format", "json"]])
def test_json_output_is_json_and_nothing_else(tmp_path, args):
    papers = two_good(tmp_path)
    proc = subprocess.run([ATLAS, *args, "--papers", str(papers)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    json.loads(proc.stdout)


def test_show_unknown_id_suggests(tmp_path):
    result = runner.invoke(app, ["show", "alpah", "--papers", str(two_good(tmp_path))])
    assert result.exit_code == 1
    assert "no record 'alpah' (did you mean 'alpha'?)" in result.stderr


def test_list_filters(tmp_path):
    papers = str(two_good(tmp_path))
    result = runner.invoke(app, ["list", "--year", "2023", "--json", "--papers", papers])
    assert [r["id"] for r in json.loads(result.stdout)] == ["beta"]
    result = runner.invoke(app, ["list", "--theme", "pruning", "--json", "--papers", papers])
    assert json.loads(result.stdout) == []
