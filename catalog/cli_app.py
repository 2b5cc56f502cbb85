"""The one typer application that every command module registers on.

Command modules live in `catalog/commands/` (one per capability) and are imported by
`catalog.cli`. Heavy libraries (torch, sentence-transformers) are imported inside commands so
that `atlas --help` and the catalog commands start fast.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

from catalog import __version__

app = typer.Typer(
    name="atlas",
    help="LLM Compression Atlas: a searchable catalog of LLM-compression papers and runnable reference "
    "implementations.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)

PapersOption = typer.Option(
    None,
    "--papers",
    help="Catalog directory (default: $ATLAS_PAPERS or ./papers).",
    show_default=False,
)


def papers_dir(papers: Path | None) -> Path:
    """The catalog directory: --papers, else $ATLAS_PAPERS, else ./papers."""
    if papers is not None:
        return papers
    return Path(os.environ.get("ATLAS_PAPERS", "papers"))


def _version(value: bool) -> None:
    if value:
        typer.echo(f"atlas {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Show the version and exit."),
) -> None:
    """LLM Compression Atlas command line."""
