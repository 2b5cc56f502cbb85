"""The site directory: never overwrite a user's files, never leave a half-built site in place.

`atlas build` writes into a fresh temporary directory next to the target and swaps it in only
when mkdocs has finished, so an interrupted or failed build leaves the previous site untouched.
Where the kernel offers it (Linux `renameat2(RENAME_EXCHANGE)`) the swap is one atomic step;
elsewhere the old site is renamed aside first, and a leftover is put back by the next build.
A complete build carries a marker file; a non-empty directory without it (and that does not look
like an older atlas build) is refused unless `--force`, and `atlas serve` refuses a site whose
marker is missing or whose files are fewer than the marker counted.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

MARKER = ".atlas-site.json"
STALE_TMP_S = 600  # a temporary build this old belongs to a build that died
_RENAME_EXCHANGE = 2


class SiteDirError(Exception):
    """The target directory cannot be used (bad input: exit 1)."""


def _files(directory: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(directory))


def _older_build(directory: Path) -> bool:
    """A site built by atlas before the marker existed: mkdocs' own files are all there."""
    return all((directory / p).is_file() for p in ("index.html", "sitemap.xml", "search/search_index.json"))


def check_target(site_dir: Path, *, force: bool = False) -> None:
    """SiteDirError unless `site_dir` is absent, empty, a previous site build, or `force` is given."""
    if site_dir.is_symlink():
        raise SiteDirError(f"--site-dir {site_dir} is a symbolic link; give the directory itself")
    if site_dir.exists() and not site_dir.is_dir():
        raise SiteDirError(f"--site-dir {site_dir} exists and is not a directory")
    if not site_dir.exists():
        return
    # Never replaced, not even with --force: the directory you work in, or a git checkout.
    if Path.cwd().resolve().is_relative_to(site_dir.resolve()) or (site_dir / ".git").exists():
        raise SiteDirError(f"--site-dir {site_dir} contains the current directory or a git repository; "
                           "choose a directory of its own for the site")
    if force:
        return
    try:
        empty = not any(site_dir.iterdir())
    except OSError as exc:
        raise SiteDirError(f"--site-dir {site_dir}: cannot read it ({exc.strerror})") from None
    if not empty and not (site_dir / MARKER).is_file() and not _older_build(site_dir):
        raise SiteDirError(f"--site-dir {site_dir} holds files that are not a site built by atlas "
                           "(no marker file); its contents would be replaced: choose an empty or new "
                           "directory, or pass --force to replace them")


def site_problem(site_dir: Path) -> str | None:
    """Why `site_dir` is not a complete site built by `atlas build`, or None when it is."""
    if not (site_dir / "index.html").is_file():
        return f"{site_dir}/index.html not found: run `atlas build` first"
    try:
        marker = json.loads((site_dir / MARKER).read_text(encoding="utf-8"))
        expected = int(marker["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return (f"{site_dir} has no valid {MARKER}: it is not a complete site built by `atlas build` "
                "(an interrupted build, or files copied by hand); run `atlas build`")
    found = _files(site_dir)
    if found < expected:
        return f"{site_dir} is incomplete ({found} of {expected} files): run `atlas build`"
    return None


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2); False where the system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    done = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0
    return done


def _restore_aside(site_dir: Path) -> None:
    """Put back a previous site that a swap interrupted between its two renames."""
    aside = site_dir.with_name(f".{site_dir.name}.old")
    if aside.is_dir() and not site_dir.exists():
        os.rename(aside, site_dir)
    elif aside.is_dir():
        shutil.rmtree(aside, ignore_errors=True)


def _clean_stale(site_dir: Path) -> None:
    now = time.time()
    for path in site_dir.parent.glob(f".{site_dir.name}.tmp-*"):
        with contextlib.suppress(OSError):
            if now - path.stat().st_mtime > STALE_TMP_S:
                shutil.rmtree(path, ignore_errors=True)


def swap_in(new: Path, site_dir: Path) -> None:
    """Make `new` the content of `site_dir` in one step, then delete the old content."""
    if not site_dir.exists():
        os.rename(new, site_dir)
        return
    if _exchange(new, site_dir):
        shutil.rmtree(new, ignore_errors=True)  # `new` now holds the old site
        return
    aside = site_dir.with_name(f".{site_dir.name}.old")
    shutil.rmtree(aside, ignore_errors=True)
    os.rename(site_dir, aside)
    os.rename(new, site_dir)
    shutil.rmtree(aside, ignore_errors=True)


@contextlib.contextmanager
def staged(site_dir: Path) -> Iterator[Path]:
    """A fresh directory to build into; on success it becomes `site_dir` with its marker written."""
    site_dir = Path(site_dir).absolute()
    try:
        site_dir.parent.mkdir(parents=True, exist_ok=True)
        _restore_aside(site_dir)
        _clean_stale(site_dir)
        tmp = Path(tempfile.mkdtemp(prefix=f".{site_dir.name}.tmp-", dir=site_dir.parent))
    except OSError as exc:
        why = exc.strerror or exc
        raise SiteDirError(f"--site-dir {site_dir}: cannot write next to it ({why})") from None
    try:
        yield tmp
        (tmp / MARKER).write_text(json.dumps({"atlas_site": 1, "files": _files(tmp) + 1,
                                              "built": time.time()}), encoding="utf-8")
        tmp.chmod(0o755)  # mkdtemp makes it private; a site directory is world-readable as usual
        swap_in(tmp, site_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
