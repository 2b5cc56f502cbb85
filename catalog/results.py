"""Measured runs from results/*.json as uniform rows: what the Results page, the plots and paper pages show.

Every family writes the DESIGN §3 run record (`method`, `model`, `options`, `metrics`, `bits_per_weight`,
`params`, `time_s`) but measures quality its own way: weight compression changes held-out perplexity,
a KV-cache policy changes the perplexity of generation through the cache (`perplexity_kv`), a prompt
compressor that of the continuation after the compressed context (`perplexity_compressed`). `Run.quality`
picks the figure that the method changes, with the uncompressed reference on the same text. Metrics
this module does not know are kept in `Run.metrics` and shown as they are.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("atlas.results")

# The options that set a method's compression budget, in the order a setting is written.
BUDGET_OPTIONS = ("bits", "group_size", "fmt", "scheme", "sparsity", "prune_n", "prune_m", "pruning_ratio",
                  "ratio", "n_remove", "budget", "rank")
# (metric, reference metric, label): the first one a run reports is the quality it changed.
QUALITY_METRICS = (("perplexity_kv", "perplexity_kv_full", "perplexity, generation through the cache"),
                   ("perplexity_compressed", "perplexity_full_context",
                    "perplexity after the compressed prompt"),
                   # black-box distillation trains its own task models and leaves the runner's model
                   # untouched: its figure is the student's task accuracy, not that model's perplexity
                   ("task_accuracy", "task_accuracy_teacher", "task accuracy (exact match)"),
                   ("perplexity", "perplexity_fp", "held-out perplexity"),
                   ("cosine", None, "embedding cosine to the uncompressed encoder"))


def _num(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


@dataclass
class Run:
    method: str
    family: str
    model: str
    options: dict
    metrics: dict
    papers: tuple[str, ...] = ()
    fidelity: str = ""
    bits_per_weight: float | None = None
    params: int | None = None
    time_s: float | None = None
    stages: tuple[str, ...] = ()
    source: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def model_name(self) -> str:
        return self.model.rstrip("/").rsplit("/", 1)[-1]

    @property
    def quality(self) -> tuple[str, float | None, float | None]:
        """(label, value, uncompressed reference) of the quality this run changes; lower is better
        except for cosine and task accuracy (`higher_is_better`)."""
        for key, ref, label in QUALITY_METRICS:
            value = _num(self.metrics.get(key))
            if value is not None:
                if key == "perplexity" and "perplexity_fp_same_steps" in self.metrics:
                    # a model trained from scratch (BitNet): its uncompressed peer is the same-size FP
                    # model trained the same steps, not the project's pretrained model
                    ref = "perplexity_fp_same_steps"
                reference = _num(self.metrics.get(ref)) if ref else 1.0
                return label, value, reference
        return "", None, None

    @property
    def higher_is_better(self) -> bool:
        label = self.quality[0]
        return label.startswith(("embedding cosine", "task accuracy"))

    @property
    def perplexity(self) -> float | None:
        """Held-out perplexity of the method's model; None for a task-accuracy run (the perplexity in
        its record is the untouched model's, not a point to plot)."""
        if _num(self.metrics.get("task_accuracy")) is not None:
            return None
        return _num(self.metrics.get("perplexity"))

    @property
    def size_mb(self) -> float | None:
        """Stored weights in MB (10^6 bytes): the ledger's `weight_bytes`, else bits/weight × params."""
        if "task_accuracy" in self.metrics:
            # a method that trains its own student (black-box distillation): the runner's weight_bytes are
            # the untouched project model's; the student is float32
            n = _num(self.metrics.get("student_params"))
            return None if n is None else n * 4 / 1e6
        weight_bytes = _num(self.metrics.get("weight_bytes"))
        if weight_bytes is None and self.bits_per_weight is not None and self.params:
            weight_bytes = self.bits_per_weight * self.params / 8
        return None if weight_bytes is None else weight_bytes / 1e6

    @property
    def sparsity(self) -> float | None:
        """Fraction of weights removed: measured zeros (unstructured, N:M), else the share of the
        transformer blocks' parameters a structured method removed."""
        for key in ("sparsity", "block_params_removed", "params_removed"):
            value = _num(self.metrics.get(key))
            if value is not None:
                return value
        return None

    @property
    def tasks(self) -> dict[str, float]:
        """Scores of the evaluation suite beyond perplexity (reference_impls/common/tasks.py), higher is
        better; `tasks_fp` holds the uncompressed model's scores on the same items."""
        return self._scores("tasks")

    @property
    def tasks_fp(self) -> dict[str, float]:
        return self._scores("tasks_fp")

    def _scores(self, key: str) -> dict[str, float]:
        tasks = self.metrics.get(key)
        if not isinstance(tasks, dict):
            return {}
        return {str(k): v for k, v in ((k, _num(v)) for k, v in tasks.items()) if v is not None}

    def budget(self) -> tuple:
        """The compression budget as comparable (option, value) pairs; options at a no-op value
        (16 bits, sparsity 0, N:M off) are left out, so GPTQ at 4-bit g128 meets RTN at 4-bit g128 and
        SparseGPT without joint quantization meets Wanda at the same sparsity."""
        o = self.options
        bits = o.get("bits")
        pairs = []
        if isinstance(bits, int | float) and not isinstance(bits, bool) and 0 < bits < 16:  # 0: off
            pairs += [("bits", bits), ("group_size", o.get("group_size"))]
        for key in ("fmt", "scheme", "sparsity", "pruning_ratio", "ratio", "n_remove", "budget", "rank"):
            if o.get(key) not in (None, 0, 0.0, False, ""):
                pairs.append((key, o[key]))
        if o.get("prune_n"):
            pairs.append(("n:m", f"{o['prune_n']}:{o.get('prune_m')}"))
        return tuple(pairs)

    def setting(self, keys: list[str] | None = None) -> str:
        """`key=value` for the given option keys (default: the budget options the run has)."""
        keys = keys if keys is not None else budget_keys(self.options)
        return ", ".join(f"{k}={_fmt(self.options.get(k))}" for k in keys
                         if k in self.options and not self._no_op(k))

    def _no_op(self, key: str) -> bool:
        """Options at their 'off' value (bits 0 or 16, N:M 0) and the group size of an off quantizer."""
        stage, _, name = key.rpartition(".")
        prefix = f"{stage}." if stage else ""
        value = self.options.get(key)
        if name in ("bits", "prune_n", "prune_m"):
            return value in (0, 16) if name == "bits" else value == 0
        if name == "group_size":
            return self.options.get(prefix + "bits") in (0, 16)
        return False


def budget_keys(options: dict) -> list[str]:
    """The budget options among `options`, in BUDGET_OPTIONS order; a composition's stage-qualified
    options (`gptq.bits`) count as their option."""
    order = {k: i for i, k in enumerate(BUDGET_OPTIONS)}
    keys = [k for k in options if k.rsplit(".", 1)[-1] in order]
    return sorted(keys, key=lambda k: (order[k.rsplit(".", 1)[-1]], k))


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def family_of(method: str, families: dict[str, str]) -> str:
    if "+" in method:
        return "combination"
    return families.get(method, "other")


def _rows_of(data) -> list[dict]:
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        return data.get("runs", [data])
    return []


def _own_bits(row: dict) -> float | None:
    return None if "task_accuracy" in row["metrics"] else _num(row.get("bits_per_weight"))


def load_runs(results_dir: Path, families: dict[str, str] | None = None) -> list[Run]:
    """Every run record under `results_dir` (files without runs, like the search benchmark, are skipped).

    `families`: registered method name -> family; a composition `a+b` is family `combination`.
    """
    families = families or {}
    runs: list[Run] = []
    for path in sorted(Path(results_dir).glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            log.warning("skipping unreadable results file %s", path)
            continue
        top = data if isinstance(data, dict) else {}
        for row in _rows_of(data):
            if not (isinstance(row, dict) and isinstance(row.get("method"), str)
                    and isinstance(row.get("metrics"), dict)):
                continue
            method = row["method"]
            stages = row.get("stages") or (method.split("+") if "+" in method else [])
            stage_names = tuple(s if isinstance(s, str) else str(s.get("method", "")) for s in stages)
            papers = row.get("papers") or (top.get("papers") if top.get("method") == method else None) or []
            runs.append(Run(
                method=method, family=family_of(method, families), model=str(row.get("model", "")),
                options=row.get("options") if isinstance(row.get("options"), dict) else {},
                metrics=row["metrics"], papers=tuple(str(p) for p in papers),
                fidelity=str(row.get("fidelity") or top.get("fidelity") or ""),
                # a method training its own student reports the untouched project model's bits: not its own
                bits_per_weight=_own_bits(row),
                params=row.get("params"),
                time_s=_num(row.get("time_s")), stages=stage_names, source=path.name))
    _merge_task_rows(runs, results_dir)
    # A combination's papers are its stages' papers (as the single-method files name them).
    papers_of = {r.method: r.papers for r in runs if r.papers and not r.stages}
    for r in runs:
        if r.stages and not r.papers:
            r.papers = tuple(dict.fromkeys(p for s in r.stages for p in papers_of.get(s, ())))
    return runs


def _merge_task_rows(runs: list[Run], results_dir: Path) -> None:
    """Task scores measured by a re-run of a committed run (results/task_agreement.json `rows`: method,
    options, tasks, tasks_fp) are attached to that causal-LM run when it has none of its own."""
    path = Path(results_dir) / "task_agreement.json"
    try:
        rows = json.loads(path.read_text()).get("rows", []) if path.exists() else []
    except (OSError, ValueError, AttributeError):
        log.warning("skipping unreadable task rows in %s", path)
        return
    by_key = {(r.method, json.dumps(r.options, sort_keys=True)): r for r in runs if r.model == "causal"}
    for row in rows if isinstance(rows, list) else []:
        if not (isinstance(row, dict) and isinstance(row.get("tasks"), dict)):
            continue
        run = by_key.get((row.get("method"), json.dumps(row.get("options"), sort_keys=True)))
        if run is not None and "tasks" not in run.metrics:
            run.metrics = {**run.metrics, "tasks": row["tasks"], "tasks_fp": row.get("tasks_fp") or {}}
            run.extra["tasks_source"] = path.name


def same_budget(run: Run, runs: list[Run]) -> list[Run]:
    """The runs of other methods of the same family, on the same model, at `run`'s budget."""
    budget = run.budget()
    if not budget:
        return []
    return [r for r in runs if r.method != run.method and r.family == run.family and r.model == run.model
            and r.budget() == budget]
