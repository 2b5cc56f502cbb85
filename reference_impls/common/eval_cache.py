"""On-disk cache of the uncompressed model's evaluation (every `atlas run` compares against it).

An entry is a safetensors file under `$ATLAS_CACHE/eval/` (default `.atlas/eval/`), named by the hash
of its settings: the model's content hash (every parameter and buffer, byte for byte), the evaluation
data's hash (the held-out token windows, or the encoder's texts) and every setting that changes the
figures (windows, seed, batch size, precision, device, tasks, torch version). Changing any of them
misses the cache; nothing is ever invalidated by time. The settings are also stored inside the file
and compared on read, and every tensor is checked for its expected shape and for finite values, so
a truncated, foreign or damaged file is recomputed and overwritten, never trusted and never a crash.
Writes go to a temporary file renamed into place, so concurrent runs never read half a file.
`ATLAS_EVAL_CACHE=0` turns the cache off.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import torch

ENV_OFF = "ATLAS_EVAL_CACHE"


def cache_dir() -> Path:
    return Path(os.environ.get("ATLAS_CACHE", ".atlas")) / "eval"


def enabled() -> bool:
    return os.environ.get(ENV_OFF, "1") not in ("0", "off", "false", "no")


def tensor_hash(tensors: dict[str, torch.Tensor] | list[torch.Tensor], h=None) -> str:
    """sha256 over names, dtypes, shapes and raw bytes (order of a dict's sorted names)."""
    h = h or hashlib.sha256()
    items = sorted(tensors.items()) if isinstance(tensors, dict) else list(enumerate(tensors))
    for name, t in items:
        t = t.detach()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def model_hash(model: torch.nn.Module) -> str:
    """Content hash of a model: its class, config and every parameter and buffer."""
    h = hashlib.sha256(type(model).__name__.encode())
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_json_string"):
        h.update(config.to_json_string(use_diff=False).encode())
    return tensor_hash(dict(model.state_dict()), h)


def text_hash(texts: list[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()


def _path(settings: dict) -> tuple[Path, str]:
    canonical = json.dumps(settings, sort_keys=True, default=str)
    return cache_dir() / f"{hashlib.sha256(canonical.encode()).hexdigest()[:32]}.safetensors", canonical


def load(settings: dict, shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor] | None:
    """The cached tensors for `settings` when present and intact (exactly `shapes`), else None."""
    from safetensors import safe_open

    path, canonical = _path(settings)
    if not enabled() or not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            if (f.metadata() or {}).get("settings") != canonical or set(f.keys()) != set(shapes):
                return None
            out = {k: f.get_tensor(k) for k in shapes}
    except Exception:  # noqa: BLE001  any unreadable file is a miss: it is rebuilt
        return None
    for k, shape in shapes.items():
        t = out[k]
        if tuple(t.shape) != tuple(shape) or (t.is_floating_point() and not torch.isfinite(t).all()):
            return None
    return out


def store(settings: dict, tensors: dict[str, torch.Tensor]) -> None:
    """Write the entry atomically; a read-only or full disk only costs the cache, never the run."""
    from safetensors.torch import save_file

    if not enabled():
        return
    path, canonical = _path(settings)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp),
                  metadata={"settings": canonical})
        tmp.replace(path)
    except Exception:  # noqa: BLE001  (OSError, or safetensors' own error on a full disk)
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def cached(settings: dict, shapes: dict[str, tuple[int, ...]],
           compute: Callable[[], dict[str, torch.Tensor]]) -> tuple[dict[str, torch.Tensor], bool]:
    """(tensors, hit): the cached entry, or `compute()` stored for next time."""
    hit = load(settings, shapes)
    if hit is not None:
        return hit, True
    out = compute()
    bad = {k: tuple(v.shape) for k, v in out.items() if tuple(v.shape) != tuple(shapes.get(k, ()))}
    if bad or set(out) != set(shapes):
        raise ValueError(f"evaluation returned shapes {bad or sorted(out)}, expected {shapes}")
    store(settings, out)
    return out, False
