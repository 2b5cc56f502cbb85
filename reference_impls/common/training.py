"""One training loop for every method that trains (distillation, QAT, adapter recovery, BitNet).

The shape of nanoGPT's `train.py`, without its globals: seeded, AdamW, linear warm-up then cosine decay
to `min_lr_ratio`·lr, gradient clipping, bf16 autocast on CPUs with native bf16 dot products (fp32
master weights, as mixed-precision training does), a step limit *and* a wall-clock budget, a progress
bar on stderr, and the loss curve returned for the result record. No callbacks: a method hands in a
`loss_fn(batch) -> scalar` and a `batch_at(step) -> batch`.

Also here, because every distillation and recovery method needs them:
- `TeacherStudent`: the teacher frozen (eval mode, no grad) and the student's and teacher's outputs on
  the same batch, optionally with hidden states and attention weights;
- `make_student`: a smaller model of the teacher's architecture built from its config — fewer layers
  (initialised from a selection of the teacher's layers, as DistilBERT and Minitron do, or randomly)
  and/or narrower (random init only: a narrower layer has no teacher weights to copy);
- `add_lora` / `merge_lora`: parameter-efficient adapters from `peft` (the ecosystem's LoRA), merged
  with peft's own `merge_and_unload`.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from reference_impls.common.adapters import adapter_for
from reference_impls.common.hardware import native_bf16


@dataclass
class TrainConfig:
    max_steps: int = 100
    time_budget: float | None = None  # seconds of wall clock; the loop stops after the step that crosses it
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 10
    min_lr_ratio: float = 0.1  # cosine decays to this fraction of lr at max_steps
    grad_clip: float | None = 1.0  # max global grad norm; None = no clipping
    seed: int = 0
    bf16: bool | None = None  # None = autocast exactly when the CPU has native bf16 (and device is cpu)
    progress: bool = True  # a progress bar on stderr when it is a terminal


@dataclass
class TrainResult:
    losses: list[float] = field(default_factory=list)  # one per step, before the step's update
    steps: int = 0
    time_s: float = 0.0
    stopped_by: str = "max_steps"  # "max_steps" | "time_budget"
    bf16: bool = False

    def summary(self, prefix: str = "train") -> dict[str, Any]:
        """The figures a result record carries: first/last loss, steps, time, why it stopped."""
        out: dict[str, Any] = {f"{prefix}_steps": self.steps, f"{prefix}_time_s": round(self.time_s, 3),
                               f"{prefix}_stopped_by": self.stopped_by}
        if self.losses:
            out.update({f"{prefix}_loss_first": self.losses[0], f"{prefix}_loss_last": self.losses[-1],
                        f"{prefix}_loss_curve": downsample(self.losses)})
        return out


def downsample(values: Sequence[float], n: int = 50) -> list[float]:
    """At most `n` points of a curve (means of consecutive chunks), small enough for a JSON record."""
    if len(values) <= n:
        return [round(v, 5) for v in values]
    edges = [round(i * len(values) / n) for i in range(n + 1)]
    return [round(sum(values[a:b]) / (b - a), 5) for a, b in zip(edges, edges[1:], strict=False)]


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up over `warmup_steps`, then cosine from lr down to min_lr_ratio·lr at max_steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.max_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def _bar(step: int, total: int, loss: float, started: float) -> None:
    width = 24
    done = int(width * step / max(1, total))
    sys.stderr.write(f"\rtrain [{'#' * done}{'.' * (width - done)}] {step}/{total} loss {loss:.4f} "
                     f"{time.perf_counter() - started:.0f}s")
    sys.stderr.flush()


def train(params: Iterable[nn.Parameter], loss_fn: Callable[[Any], torch.Tensor],
          batch_at: Callable[[int], Any], cfg: TrainConfig, *,
          device: torch.device | str = "cpu") -> TrainResult:
    """Minimise `loss_fn(batch_at(step))` over `params` with AdamW; stop at max_steps or time_budget.

    Bit-reproducible for a fixed seed on the same machine: the seed is set here, before the first
    batch is drawn, and nothing else in the loop draws random numbers outside torch's generator.
    """
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("nothing to train: no parameter requires grad")
    if cfg.max_steps < 1:
        raise ValueError(f"--max-steps must be at least 1, got {cfg.max_steps}")
    if cfg.time_budget is not None and cfg.time_budget <= 0:
        raise ValueError(f"--time-budget must be positive seconds, got {cfg.time_budget}")
    torch.manual_seed(cfg.seed)
    device = torch.device(device)
    bf16 = (native_bf16() if cfg.bf16 is None else cfg.bf16) and device.type == "cpu"
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    show = cfg.progress and sys.stderr.isatty()
    result = TrainResult(bf16=bf16)
    started = time.perf_counter()
    for step in range(cfg.max_steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(batch_at(step))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        result.losses.append(float(loss.detach()))
        result.steps = step + 1
        if show:
            _bar(step + 1, cfg.max_steps, result.losses[-1], started)
        if cfg.time_budget is not None and time.perf_counter() - started >= cfg.time_budget:
            result.stopped_by = "time_budget" if step + 1 < cfg.max_steps else "max_steps"
            break
    if show:
        sys.stderr.write("\n")
    result.time_s = time.perf_counter() - started
    return result


def cycle(batches: Sequence[Any]) -> Callable[[int], Any]:
    """`batch_at` over a fixed list of batches, in order, wrapping around."""
    if not batches:
        raise ValueError("no training batches")
    return lambda step: batches[step % len(batches)]


def causal_lm_loss(model: nn.Module) -> Callable[[dict], torch.Tensor]:
    """Next-token cross-entropy of a causal LM on a batch holding `input_ids` (labels = inputs)."""
    device = next(model.parameters()).device

    def loss_fn(batch: dict) -> torch.Tensor:
        ids = batch["input_ids"].to(device)
        return model(input_ids=ids, labels=ids, use_cache=False).loss

    return loss_fn


# ---------------------------------------------------------------- teacher and student
@dataclass
class Outputs:
    logits: torch.Tensor | None  # (batch, seq, vocab) for causal LMs; None for encoders
    hidden_states: tuple[torch.Tensor, ...] | None = None  # embeddings, then one per layer
    attentions: tuple[torch.Tensor, ...] | None = None  # (batch, heads, seq, seq) per layer
    last_hidden_state: torch.Tensor | None = None


def _outputs(out) -> Outputs:
    return Outputs(logits=getattr(out, "logits", None), hidden_states=getattr(out, "hidden_states", None),
                   attentions=getattr(out, "attentions", None),
                   last_hidden_state=getattr(out, "last_hidden_state", None))


class TeacherStudent:
    """A frozen teacher (eval mode, requires_grad False, run under no_grad) beside a trainable student.

    Attention weights need the eager attention path (SDPA does not materialise them): asking for
    `attentions=True` switches both models to eager attention once.
    """

    def __init__(self, teacher: nn.Module, student: nn.Module, *, attentions: bool = False) -> None:
        self.teacher, self.student = teacher.eval(), student
        teacher.requires_grad_(False)
        self.attentions = attentions
        if attentions:
            for m in (teacher, student):
                m.set_attn_implementation("eager")

    def __call__(self, batch: dict, *, hidden_states: bool = False) -> tuple[Outputs, Outputs]:
        """(student outputs with grad, teacher outputs without) on the same batch."""
        device = next(self.student.parameters()).device
        feed = {k: v.to(device) for k, v in batch.items() if k != "labels"}
        flags = dict(output_hidden_states=hidden_states, output_attentions=self.attentions)
        if adapter_for(self.student).causal:
            flags["use_cache"] = False
        with torch.no_grad():
            t = _outputs(self.teacher(**feed, **flags))
        s = _outputs(self.student(**feed, **flags))
        return s, t


def make_student(teacher: nn.Module, *, num_layers: int | None = None, layers: Sequence[int] | None = None,
                 hidden_size: int | None = None, intermediate_size: int | None = None,
                 num_attention_heads: int | None = None, init: str = "teacher", seed: int = 0) -> nn.Module:
    """A smaller model of the teacher's architecture.

    init="teacher": a copy of the teacher keeping only the decoder/encoder layers `layers` (default:
    `num_layers` of them evenly spaced, first and last included — DistilBERT takes every other layer),
    embeddings, final norm and head copied; width must stay the teacher's. init="random": the teacher's
    config with the given depth/width overrides, freshly initialised with `seed`.
    """
    n_teacher = teacher.config.num_hidden_layers
    if layers is None:
        n = num_layers or n_teacher
        if not 1 <= n <= n_teacher:
            raise ValueError(f"num_layers must be in 1..{n_teacher}, got {n}")
        layers = [round(i * (n_teacher - 1) / max(1, n - 1)) for i in range(n)] if n > 1 else [0]
    layers = list(layers)
    if any(not 0 <= i < n_teacher for i in layers) or len(set(layers)) != len(layers):
        raise ValueError(f"layers must be distinct indices in 0..{n_teacher - 1}, got {layers}")
    width = {k: v for k, v in dict(hidden_size=hidden_size, intermediate_size=intermediate_size,
                                   num_attention_heads=num_attention_heads).items() if v is not None}
    if init == "teacher":
        if width:
            raise ValueError(f"init='teacher' copies teacher layers, so width must stay; got {width}")
        return _select_layers(teacher, layers)
    if init != "random":
        raise ValueError(f"init must be 'teacher' or 'random', got {init!r}")
    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = len(layers)
    for k, v in width.items():
        setattr(config, k, v)
    if "hidden_size" in width and getattr(config, "head_dim", None):
        config.head_dim = config.hidden_size // config.num_attention_heads
    if getattr(config, "layer_types", None):
        config.layer_types = config.layer_types[: len(layers)]
    torch.manual_seed(seed)
    student = type(teacher)(config)
    return student.to(next(teacher.parameters()).device).float()


def _select_layers(teacher: nn.Module, layers: list[int]) -> nn.Module:
    adapter = adapter_for(teacher)
    student = copy.deepcopy(teacher)
    blocks = adapter.blocks(student)
    kept = nn.ModuleList([blocks[i] for i in layers])
    for new_idx, block in enumerate(kept):
        for module in block.modules():  # the KV cache is indexed by each attention's layer_idx
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_idx
    parent_path, _, attr = adapter.blocks_path.rpartition(".")
    setattr(student.get_submodule(parent_path) if parent_path else student, attr, kept)
    student.config.num_hidden_layers = len(layers)
    if getattr(student.config, "layer_types", None):
        student.config.layer_types = [student.config.layer_types[i] for i in layers]
    student.requires_grad_(True)
    return student


# ---------------------------------------------------------------- adapters (peft)
def add_lora(model: nn.Module, *, rank: int = 8, alpha: float | None = None, dropout: float = 0.0,
             target_modules: Sequence[str] | None = None, **config: Any):
    """Wrap `model` with LoRA adapters through peft (base weights frozen); returns the PeftModel.

    Targets default to every block linear the project's adapter knows (q/k/v/o and the MLP for
    Llama). Extra keyword arguments go to `peft.LoraConfig` (e.g. use_dora=True, init_lora_weights).
    """
    from peft import LoraConfig, get_peft_model

    if rank < 1:
        raise ValueError(f"--lora-rank must be at least 1, got {rank}")
    if target_modules is None:
        # peft matches a target as a dotted suffix of a module name, so the block-relative names are exact.
        target_modules = adapter_for(model).linear_names
    cfg = LoraConfig(r=rank, lora_alpha=alpha if alpha is not None else 2 * rank, lora_dropout=dropout,
                     target_modules=list(target_modules), bias="none", **config)
    return get_peft_model(model, cfg)


def merge_lora(peft_model) -> nn.Module:
    """Fold the adapters into the base weights (peft's merge_and_unload); the plain model, trainable again."""
    model = peft_model.merge_and_unload()
    model.requires_grad_(True)
    return model
