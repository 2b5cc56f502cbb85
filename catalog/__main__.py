"""The `atlas` command (`python -m catalog` too): Ctrl-C while the program is still starting exits quietly.

Importing the command line takes a moment (typer, rich, pydantic); a Ctrl-C in that window would
print a KeyboardInterrupt traceback from the middle of an import. Until the application runs, Ctrl-C
ends the process at once with exit code 130; from then on typer and the commands handle it, and once
the command has returned Ctrl-C is ignored while the interpreter shuts down.

The cyclic garbage collector is tuned for a program that builds a few million long-lived objects
(torch, transformers, the records) and then works: at Python's default thresholds it scanned them
again and again while they were being created, and once more while the interpreter shut down (1.2-1.5 s
after `atlas run` had printed its result). Young collections now run every 10,000 allocations instead
of 700, and what is alive when the command returns is frozen (`gc.freeze`), so the shutdown does not
walk it. Measured in reference_impls/common/PERFORMANCE.md.
"""

import gc
import os
import signal
import sys


def _quit(signum, frame):
    os._exit(130)


def main() -> None:
    gc.set_threshold(10_000, 20, 20)
    previous = signal.signal(signal.SIGINT, _quit)
    from catalog.cli import app

    signal.signal(signal.SIGINT, previous)
    try:
        sys.exit(app())
    finally:
        # the command is over and what it wrote is in place: a Ctrl-C during the interpreter's shutdown
        # (torch and faiss tear down for a moment) must not turn its exit status into a signal death
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        gc.freeze()


if __name__ == "__main__":
    main()
