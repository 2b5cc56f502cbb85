"""Writing the files a user asks for (`export -o`, `add`, `enrich --write`) without ever leaving debris.

The destination is checked before any work is done (a missing folder, a directory in the way);
the text goes to a temporary file in the same folder that replaces the target in one rename, and
the temporary file is removed whatever fails. A destination that is not a regular file (a terminal,
`/dev/stdout`, a FIFO) is written in place: renaming over it would replace the device entry.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path


class OutputError(Exception):
    """The destination cannot be written; `code` is the exit code (1: bad path, 2: the system failed)."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def _special(path: Path) -> bool:
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)


def check_output_file(path: Path, option: str = "-o") -> Path:
    """The path to write (a symlink to a file is followed); OutputError when it cannot be a file."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{option} {path} is a directory; give a file name")
    if _special(path):
        return path
    if path.is_symlink():
        path = path.resolve()
    parent = path.parent
    if not parent.is_dir():
        raise OutputError(f"{option} {path}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{option} {path}: the folder {parent} is not writable")
    return path


def write_text_atomic(path: Path, text: str, option: str = "-o") -> None:
    """Write `text` (UTF-8) to `path`: all of it or, on any failure, nothing and no temporary file."""
    path = check_output_file(path, option)
    try:
        if _special(path):
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
            return
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise OutputError(f"{option} {path}: cannot write ({exc.strerror or exc})", 2) from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            os.chmod(tmp, stat.S_IMODE(path.stat().st_mode))  # keep the permissions of the file replaced
        else:
            os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as exc:
        raise OutputError(f"{option} {path}: cannot write ({exc.strerror or exc})", 2) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
