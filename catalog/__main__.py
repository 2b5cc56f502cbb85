"""The `atlas` command (`python -m catalog` too): Ctrl-C while the program is still starting exits quietly.

Importing the command line takes a moment (typer, rich, pydantic); a Ctrl-C in that window would
print a KeyboardInterrupt traceback from the middle of an import. Until the application runs, Ctrl-C
ends the process at once with exit code 130; from then on typer and the commands handle it.
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
    sys.exit(app())


if __name__ == "__main__":
    main()
