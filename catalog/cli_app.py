"""The one typer application that every command module registers on.

Command modules live in `catalog/commands/` (one per capability) and are imported by
`catalog.cli`. Heavy libraries (torch, sentence-transformers) are imported inside commands so
that `atlas --help` and the catalog commands start fast.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import typer
from typer.core import TyperGroup

from catalog import __version__

try:  # typer >= 0.20 ships its own copy of click; its commands raise that copy's errors
    from typer._click.exceptions import UsageError as _TyperUsageError
except ImportError:  # pragma: no cover - older typer uses click itself
    _TyperUsageError = click.UsageError
USAGE_ERRORS = (click.UsageError, _TyperUsageError)

# bitsandbytes (imported by peft) warns on every import that an optional CPU kernel package is absent:
# nothing atlas uses, and a line of noise before every command's own output.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


class AtlasGroup(TyperGroup):
    """Usage errors (a bad option value, a missing argument) exit 1: the README keeps 2 for problems of
    the environment (a missing model, an unwritable cache), which click would otherwise share."""

    def make_context(self, *args, **kwargs):
        try:
            return super().make_context(*args, **kwargs)
        except USAGE_ERRORS as exc:
            exc.exit_code = 1
            raise

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except USAGE_ERRORS as exc:
            exc.exit_code = 1
            raise


@contextlib.contextmanager
def exit_on_interrupt(what: str) -> Iterator[None]:
    """Ctrl-C ends the process at once with one line and exit code 130.

    Commands that load native libraries (torch, faiss, tokenizers) are stopped with os._exit: a
    KeyboardInterrupt unwinding through their half-initialised state, then the interpreter's normal
    shutdown, can abort in C++ ("terminate called", exit 134). Everything these commands write is
    written atomically, so stopping anywhere loses nothing.
    """
    def stop(signum, frame):
        sys.stderr.write(f"\ninterrupted: {what}\n")
        sys.stderr.flush()
        os._exit(130)

    try:
        previous = signal.signal(signal.SIGINT, stop)
    except ValueError:  # not the main thread (an embedding caller): leave Ctrl-C alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


app = typer.Typer(
    cls=AtlasGroup,
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
