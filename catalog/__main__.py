"""The `atlas` command (`python -m catalog` too): Ctrl-C while the program is still starting exits quietly.

Importing the command line takes a moment (typer, rich, pydantic); a Ctrl-C in that window would
print a KeyboardInterrupt traceback from the middle of an import. Until the application runs, Ctrl-C
ends the process at once with exit code 130; from then on typer and the commands handle it, and once
the command has returned Ctrl-C is ignored while the interpreter shuts down.
"""

import os
import signal
import sys


def _quit(signum, frame):
    os._exit(130)


def main() -> None:
    previous = signal.signal(signal.SIGINT, _quit)
    from catalog.cli import app

    signal.signal(signal.SIGINT, previous)
    try:
        sys.exit(app())
    finally:
        # the command is over and what it wrote is in place: a Ctrl-C during the interpreter's shutdown
        # (torch and faiss tear down for a moment) must not turn its exit status into a signal death
        signal.signal(signal.SIGINT, signal.SIG_IGN)


if __name__ == "__main__":
    main()
