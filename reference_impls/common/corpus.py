"""The causal LM's corpus: the Python standard library of the running interpreter.

Every machine has it without downloading. It is split *by top-level module* (a package and all its
files form one unit) into train / calibration / held-out parts, so near-duplicate sibling files never
straddle two parts. The calibration and held-out unit lists are committed under `models/causal-lm/`,
which makes the split identical on every machine; units not listed there are training text.
"""

from __future__ import annotations

import random
import sysconfig
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SPLIT_DIR = REPO_ROOT / "models" / "causal-lm"
HELDOUT_LIST = SPLIT_DIR / "heldout_modules.txt"
CALIBRATION_LIST = SPLIT_DIR / "calibration_modules.txt"

# Generated data tables and vendored trees, not code a person wrote: the codec charmaps are
# thousands of near-identical lines, pydoc_data is one huge string literal.
EXCLUDED_UNITS = {"test", "site-packages", "encodings", "pydoc_data", "__pycache__"}
EXCLUDED_DIR_NAMES = {"test", "tests", "idle_test", "__pycache__", "site-packages"}
EOS_TOKEN = "<|endoftext|>"


@dataclass(frozen=True)
class SourceFile:
    unit: str  # top-level module or package name: the unit of the split
    module: str  # dotted module name, e.g. "asyncio.events"
    path: Path


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(root: Path | None = None, units: set[str] | None = None) -> list[SourceFile]:
    """All eligible .py files of the standard library (of `units` only, when given), sorted by path.

    Walking only the listed units costs a few hundred stat calls, not a walk of the whole library
    (~1 s, paid by every `atlas run` for its held-out windows).
    """
    root = root or stdlib_dir()
    if units is None:
        paths = root.rglob("*.py")
    else:
        paths = [q for u in units for q in [root / f"{u}.py", *(root / u).rglob("*.py")] if q.is_file()]
    files = []
    for path in sorted(paths):
        rel = path.relative_to(root)
        if any(part in EXCLUDED_DIR_NAMES for part in rel.parts[:-1]):
            continue
        unit = rel.parts[0].removesuffix(".py")
        if unit in EXCLUDED_UNITS or unit.startswith("_sysconfigdata") or "-" in unit:
            continue
        module = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
        files.append(SourceFile(unit=unit, module=module, path=path))
    return files


def read_text(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def make_split(files: list[SourceFile], *, seed: int = 0, heldout_frac: float = 0.05,
               calibration_frac: float = 0.03, max_unit_frac: float = 0.015) -> tuple[list[str], list[str]]:
    """Choose held-out and calibration units by a seeded shuffle until each reaches its share of bytes.

    Units larger than `max_unit_frac` of the corpus stay in training so that one big package cannot
    make up a whole evaluation set.
    """
    sizes: dict[str, int] = {}
    for f in files:
        sizes[f.unit] = sizes.get(f.unit, 0) + f.path.stat().st_size
    total = sum(sizes.values())
    candidates = sorted(u for u, s in sizes.items() if s <= max_unit_frac * total)
    random.Random(seed).shuffle(candidates)
    heldout, calibration = [], []
    held_bytes = calib_bytes = 0
    for unit in candidates:
        if held_bytes < heldout_frac * total:
            heldout.append(unit)
            held_bytes += sizes[unit]
        elif calib_bytes < calibration_frac * total:
            calibration.append(unit)
            calib_bytes += sizes[unit]
    return sorted(heldout), sorted(calibration)


def write_split(heldout: list[str], calibration: list[str]) -> None:
    SPLIT_DIR.mkdir(parents=True, exist_ok=True)
    HELDOUT_LIST.write_text("\n".join(heldout) + "\n")
    CALIBRATION_LIST.write_text("\n".join(calibration) + "\n")


def _read_list(path: Path) -> set[str]:
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing: run `make model` (scripts/train_causal_lm.py) to create the split"
        )
    lines = path.read_text().splitlines()
    return {line.strip() for line in lines if line.strip() and not line.startswith("#")}


def split_files(part: str, files: list[SourceFile] | None = None) -> list[SourceFile]:
    """The files of one part ("train", "calibration" or "heldout") under the committed split."""
    heldout, calibration = _read_list(HELDOUT_LIST), _read_list(CALIBRATION_LIST)
    if heldout & calibration:
        raise ValueError(f"units in both held-out and calibration lists: {sorted(heldout & calibration)}")
    if files is None:
        files = stdlib_files(units={"heldout": heldout, "calibration": calibration}.get(part))
    if part == "heldout":
        return [f for f in files if f.unit in heldout]
    if part == "calibration":
        return [f for f in files if f.unit in calibration]
    if part == "train":
        return [f for f in files if f.unit not in heldout and f.unit not in calibration]
    raise ValueError(f"unknown part {part!r}; expected train, calibration or heldout")


def split_texts(part: str) -> list[str]:
    return [read_text(f.path) for f in split_files(part)]
