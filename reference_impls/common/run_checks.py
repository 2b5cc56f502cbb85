"""Checks of an `atlas run` before any model is loaded: option ranges, run arguments, --save.

A bad value must cost the user nothing: the model load and the reference evaluation take seconds
to minutes, so everything that can be judged from the arguments alone is judged first, with one
line naming the option. The ranges below belong to option names that several methods share
(DESIGN §6); they only bound what no method accepts, and a method's core still checks what only it
knows (e.g. GPTQ's 2..8 bits).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Range:
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # low itself excluded
    high_open: bool = False
    also: tuple = ()  # special values allowed outside the range (group_size -1: one group per row)

    def holds(self, value: float) -> bool:
        if value in self.also:
            return True
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return not (self.high is not None and (value > self.high or (self.high_open and value == self.high)))

    def describe(self) -> str:
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {self.low:g}")
        if self.high is not None:
            parts.append(f"{'<' if self.high_open else '<='} {self.high:g}")
        text = " and ".join(parts)
        return text + "".join(f" (or {v})" for v in self.also)


POSITIVE = Range(1)
NON_NEGATIVE = Range(0)
FRACTION = Range(0, 1)
OPTION_RANGES: dict[str, Range] = {
    **{name: Range(0, 16) for name in ("bits", "a_bits", "kv_bits")},  # 0: off (sparsegpt joint quantization)
    "group_size": Range(1, also=(-1,)),
    "sparsity": Range(0, 1, high_open=True),
    "ratio": Range(0, 1, low_open=True),
    "pruning_ratio": Range(0, 1, high_open=True),
    **{name: POSITIVE for name in ("budget", "window", "kernel_size", "new_tokens", "prefill", "windows",
                                   "batch_size", "seq_len", "gen_tokens", "num_beams", "iters", "n_grid",
                                   "search_samples", "block_size", "dq_block_size", "calib_seqs")},
    **{name: NON_NEGATIVE for name in ("max_steps", "time_budget", "n_sink", "n_remove", "prune_n", "prune_m",
                                       "recovery_steps", "lkd_steps", "damp", "inject_outliers")},
    **{name: FRACTION for name in ("alpha", "heavy_ratio", "teacher_mix", "lmbda", "dynamic_ratio",
                                   "outlier_frac", "skew_alpha")},
    **{name: Range(0, 1, low_open=True) for name in ("a_clip", "kv_clip")},
    **{name: Range(0, low_open=True) for name in ("temperature", "sample_temperature", "lr", "lkd_lr")},
}
DEVICE = re.compile(r"^(cpu|cuda(:\d+)?|mps)$")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def hub_offline() -> bool:
    """The project's rule (README): no hub downloads unless HF_HUB_OFFLINE is explicitly switched off."""
    return os.environ.get("HF_HUB_OFFLINE", "1").strip().lower() not in ("0", "false", "no", "off")


def _in_hub_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def model_problem(spec: str) -> str | None:
    """Why `--model spec` cannot load, judged without loading anything (None: try it).

    A hub id (org/name) that is not a local directory needs the network: with hub downloads off it
    is refused at once unless the hub cache already holds it, instead of spending half a minute
    on retries.
    """
    if spec in ("causal", "encoder"):
        return None
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            return f"--model {spec!r}: the directory has no config.json (not a Hugging Face model)"
        return None
    if path.exists():
        return f"--model {spec!r} is a file; give a model directory"
    if not HUB_ID.match(spec) or spec.startswith((".", "~")):
        return f"--model {spec!r}: no such directory (use causal, encoder or a model directory)"
    if hub_offline() and not _in_hub_cache(spec):
        return (f"--model {spec!r}: no such directory, and it is not in the local hub cache; hub "
                "downloads are off (HF_HUB_OFFLINE=1): set HF_HUB_OFFLINE=0 to fetch it")
    return None


def check_options(per_method: list[tuple[str, dict[str, Any]]]) -> None:
    """ValueError naming the first option outside its range (or not a finite number)."""
    for method, kwargs in per_method:
        for name, value in kwargs.items():
            flag = "--" + name.replace("_", "-")
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{flag} must be a finite number, got {value}")
            bounds = OPTION_RANGES.get(name)
            if bounds and isinstance(value, int | float) and not isinstance(value, bool) \
                    and not bounds.holds(value):
                raise ValueError(f"{flag} must be {bounds.describe()} (got {value!r} for {method})")
        n, m = kwargs.get("prune_n", 0), kwargs.get("prune_m", 0)
        if (n or m) and not 0 < n < m:
            raise ValueError(f"--prune-n {n} --prune-m {m}: N:M sparsity needs 0 < N < M "
                             "(e.g. --prune-n 2 --prune-m 4)")


def check_run_args(*, device: str, calib_samples: int, seed: int, eval_windows: int | None) -> None:
    if not DEVICE.match(device):
        raise ValueError(f"--device {device!r}: expected cpu, cuda, cuda:N or mps")
    if calib_samples < 1:
        raise ValueError(f"--calib-samples must be at least 1 (got {calib_samples})")
    if not 0 <= seed < 2**32:
        raise ValueError(f"--seed must be in 0..{2**32 - 1} (got {seed})")
    if eval_windows is not None and eval_windows < 1:
        raise ValueError(f"--eval-windows must be at least 1 (got {eval_windows})")


def check_save_dir(save: str | Path | None) -> None:
    """ValueError when the compressed model could not be saved to `save` (checked before the run).

    A directory that exists must be empty or hold a saved model (a config.json), so that saving
    never overwrites a user's other files.
    """
    if save is None:
        return
    path = Path(save)
    if path.exists() and not path.is_dir():
        raise ValueError(f"--save {path} exists and is not a directory")
    if path.is_dir():
        try:
            names = {p.name for p in path.iterdir()}
        except OSError as exc:
            raise ValueError(f"--save {path}: cannot read it ({exc.strerror})") from None
        if names and "config.json" not in names:
            raise ValueError(f"--save {path} holds other files; choose an empty or new directory")
        target = path
    else:
        target = next((p for p in path.absolute().parents if p.exists()), Path("/"))
        if not target.is_dir():
            raise ValueError(f"--save {path}: {target} is not a directory")
    if not os.access(target, os.W_OK | os.X_OK):
        raise ValueError(f"--save {path}: {target} is not writable")
