"""Run one registered method (or an `a+b` composition) on one model and return its result record.

The record is the JSON object of `atlas run --json` (DESIGN §3):
`{"method", "model", "options", "metrics", "bits_per_weight", "params", "time_s", "env"}`;
`time_s` is the wall time of the compression itself (calibration capture included, evaluation not).
"""

from __future__ import annotations

import os
import platform
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from reference_impls.common import compose, data, evaluate, layerwise, memory, registry
from reference_impls.common import tasks as task_suite
from reference_impls.common.models import LoadedModel, load_model
from reference_impls.common.run_checks import check_options, check_run_args, check_save_dir
from reference_impls.common.storage import StorageLedger


@dataclass
class RunContext:
    """Everything a method's model-level entry needs; methods never load or evaluate models."""

    loaded: LoadedModel
    calib_samples: int = 128
    seed: int = 0
    eval_windows: int | None = None  # the held-out windows the runner scores (methods that train a
    # student score their no-distillation baseline on the same ones)
    ledger: StorageLedger = field(default_factory=StorageLedger)
    progress: Callable[[int, int], None] | None = None
    eval_dtype: torch.dtype | None = None  # autocast dtype of the runner's evaluations (None: float32)
    # In a composition: zero patterns of the matrices earlier stages pruned (full name -> bool, True =
    # pruned), so a later quantizer can keep them (compose.py)
    pruned_masks: dict[str, torch.Tensor] = field(default_factory=dict)
    # In a composition: the merged ledger of the stages before this one (each stage writes a fresh
    # `ledger`), so a stage can tell what was compressed before it (distillation recovers a pruned model)
    earlier_ledger: StorageLedger = field(default_factory=StorageLedger)

    @property
    def model(self):
        return self.loaded.model

    @property
    def adapter(self):
        return self.loaded.adapter

    @property
    def device(self) -> torch.device:
        return self.loaded.device

    @cached_property
    def calibration(self) -> list[dict[str, torch.Tensor]]:
        """Calibration batches, drawn once per run (methods that need none never pay for them)."""
        return data.calibration(self.loaded, n_samples=self.calib_samples, seed=self.seed)

    def heldout_perplexity(self, model=None) -> float:
        """Perplexity on the runner's own held-out windows (e.g. a trained method's starting point)."""
        windows = data.heldout_windows(self.loaded, max_windows=self.eval_windows)
        return evaluate.perplexity(self.model if model is None else model, windows, dtype=self.eval_dtype)

    def walk(self, process_block: Callable[[layerwise.BlockContext], None], *, stats=("hessian",)) -> None:
        layerwise.walk_blocks(self.model, self.adapter, self.calibration, process_block, stats=stats,
                              progress=self.progress)

    def map_linears(self, fn: Callable[[str, torch.Tensor], torch.Tensor]) -> None:
        layerwise.map_linears(self.model, self.adapter, fn)


def split_options(methods: list[registry.Method], options: dict[str, Any]) -> list[dict[str, Any]]:
    """Each method's keyword arguments: its defaults overridden by the given options it declares
    (`stage.option` for one stage of a composition; compose.split_options)."""
    return compose.split_options(methods, options)


_REFERENCE_CACHE: dict[tuple, Any] = {}


def _reference(loaded: LoadedModel, *, eval_windows: int | None, papers_dir: str | Path,
               eval_dtype: str = "float32", seed: int = 0):
    """Uncompressed-model evaluation, cached per process (a benchmark grid reloads the same model) and
    on disk, keyed by the model's content hash and the evaluation settings (common/eval_cache.py)."""
    key = (loaded.name, str(loaded.device), eval_windows, str(papers_dir), eval_dtype, seed)
    if key not in _REFERENCE_CACHE:
        if loaded.kind == "causal":
            windows = data.heldout_windows(loaded, max_windows=eval_windows)
            _REFERENCE_CACHE[key] = evaluate.causal_reference(loaded.model, windows, eval_dtype=eval_dtype,
                                                              seed=seed)
        else:
            _REFERENCE_CACHE[key] = evaluate.encoder_reference(loaded, papers_dir)
    return _REFERENCE_CACHE[key]


def _process_age_s() -> float | None:
    """Seconds since this process started (Linux /proc: its start tick and the uptime), else None.

    Recorded as `env.process_age_s` when the compression begins; in a fresh `atlas run` that is the
    start-up (interpreter, imports, model load), which neither `time_s` nor `eval_time_s` shows."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])  # field 22
        return float(Path("/proc/uptime").read_text().split()[0]) - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB; process-wide


def run_method(method: str, *, model: str = "causal", device: str = "cpu", calib_samples: int = 128,
               seed: int = 0, save: str | Path | None = None, eval_windows: int | None = None,
               papers_dir: str | Path = "papers", options: dict[str, Any] | None = None,
               progress: Callable[[int, int], None] | None = None, eval_dtype: str = "float32",
               tasks: bool = False) -> dict:
    """Load `model`, compress it with `method` ("a+b" applies a then b), evaluate, return the record.

    `eval_dtype` "auto" scores perplexity under bf16 autocast where that is native and moves the
    reference perplexity by at most 0.1% (evaluate.causal_reference); the record says which."""
    methods = [registry.get(name) for name in method.split("+")]
    per_method = split_options(methods, options or {})
    evaluate.check_eval_dtype(eval_dtype)
    # everything the arguments alone can show wrong fails before the model is loaded
    check_run_args(device=device, calib_samples=calib_samples, seed=seed, eval_windows=eval_windows)
    check_options([(m.name, kwargs) for m, kwargs in zip(methods, per_method, strict=True)])
    for m, kwargs in zip(methods, per_method, strict=True):
        if m.check is not None:
            m.check(**kwargs)
    check_save_dir(save)
    torch.manual_seed(seed)
    loaded = load_model(model, device)
    if loaded.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(loaded.device)
    ref = _reference(loaded, eval_windows=eval_windows, papers_dir=papers_dir, eval_dtype=eval_dtype,
                     seed=seed)

    # `tasks`: the suite beyond perplexity (common/tasks.py) on the compressed model, next to the
    # uncompressed model's scores (from the evaluation cache when it holds them)
    tasks_fp = task_suite.reference(loaded, papers_dir) if tasks else None

    ctx = RunContext(loaded=loaded, calib_samples=calib_samples, seed=seed, eval_windows=eval_windows,
                     progress=progress, eval_dtype=getattr(ref, "dtype", None))
    load_before = os.getloadavg()[0]  # timings taken on a busy machine are not comparable: say so
    age = _process_age_s()  # in a fresh `atlas run`: the start-up (interpreter, imports, model load)
    t0 = time.perf_counter()
    method_metrics, stages = compose.apply_stages(ctx, methods, per_method)
    if loaded.device.type == "cuda":
        torch.cuda.synchronize(loaded.device)
    time_s = time.perf_counter() - t0

    t1 = time.perf_counter()
    if loaded.kind == "causal":
        windows = ref.windows
        metrics = {"perplexity": evaluate.perplexity(loaded.model, windows, dtype=ref.dtype),
                   "perplexity_fp": ref.perplexity, "eval_windows": int(windows.shape[0]),
                   "eval_tokens": int(windows.numel()), "eval_dtype": ref.dtype_name,
                   "eval_reference_cached": ref.cache_hit}
        if ref.dtype is not None:
            metrics["perplexity_fp_float32"] = ref.perplexity_float32
    else:
        metrics = evaluate.evaluate_encoder(loaded, ref)
    params = sum(p.numel() for p in loaded.model.parameters())
    metrics.update(method_metrics)
    if tasks_fp is not None:
        metrics.update(task_suite.report(loaded, papers_dir, tasks_fp))
    metrics.update(eval_time_s=time.perf_counter() - t1, peak_memory_mb=_peak_memory_mb(loaded.device),
                   model_bits_per_param=ctx.ledger.model_bits(params) / params,
                   compressed_weights=ctx.ledger.n_weights)
    held = metrics.get("kv_bytes_peak")
    metrics.update(memory.run_figures(loaded.model.config, causal=loaded.kind == "causal",
                                      weight_bits=ctx.ledger.model_bits(params),
                                      kv_bytes_held=None if held is None else held // metrics["kv_batch"]))

    merged_options = compose.record_options(methods, per_method)
    record = {
        "method": method, "model": model, "options": merged_options, "metrics": metrics,
        "bits_per_weight": ctx.ledger.bits_per_weight(), "params": params, "time_s": time_s,
        "env": {"python": platform.python_version(), "torch": torch.__version__, "device": str(loaded.device),
                "threads": torch.get_num_threads(), "calib_samples": calib_samples, "seed": seed,
                "machine": platform.machine(), "cpus": os.cpu_count(), "load_avg_1m": round(load_before, 2),
                "process_age_s": None if age is None else round(age, 2),
                "energy_assumption": memory.ENERGY_ASSUMPTION},
    }
    if stages is not None:
        record["stages"] = stages
    if save is not None:
        try:
            # De-quantized (fake-quantized) weights in Hugging Face format: any HF loader reads them back.
            loaded.model.save_pretrained(Path(save), safe_serialization=True)
            loaded.tokenizer.save_pretrained(Path(save))
        except OSError as exc:
            raise SaveFailed(record, exc) from exc
    return record


class SaveFailed(OSError):
    """The run finished but --save could not write the model; `record` holds its metrics all the same."""

    def __init__(self, record: dict, error: OSError):
        super().__init__(error.errno, error.strerror or str(error), error.filename)
        self.record = record
