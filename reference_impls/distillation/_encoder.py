"""What the encoder distillation methods (distilbert, tinybert, minilm) share: the student built from the
teacher's layers, the training texts, the internals of a forward pass, and the report.

Protocol: teacher = the loaded sentence encoder (all-MiniLM-L6-v2 by default), frozen; student = a copy
keeping `student_layers` of its layers (`make_student(init="teacher")`; `student_heads` re-splits the
same projections into another number of heads); training texts = docstrings of the corpus's *training*
modules (never the held-out docstrings or catalog records the encoder metric scores), drawn with the
run's seed, padded per batch to at most 128 tokens. The runner scores the student (cosine to the
teacher's embeddings, top-10 retrieval agreement); `cosine_no_distill` / `retrieval_agreement_no_distill`
score the same initial student without distillation (an encoder without its MLM head has no
teacher-free objective to train for the same steps, so the baseline is the untrained initialisation).
"""

from __future__ import annotations

import copy
import random

import torch

from reference_impls.common import corpus, data, evaluate
from reference_impls.common.adapters import adapter_for
from reference_impls.common.models import LoadedModel
from reference_impls.common.registry import Option
from reference_impls.common.training import TrainConfig, TrainResult, make_student

ENCODER_OPTIONS = {
    "student_layers": Option(3, "encoder layers of the student (copied from the teacher)"),
    "student_heads": Option(0, "attention heads of the student (0 = the teacher's; same projections)"),
    "max_steps": Option(100, "training steps"),
    "time_budget": Option(0.0, "wall-clock limit of the distillation in seconds (0 = none)"),
    "lr": Option(1e-4, "peak learning rate (AdamW, warm-up then cosine)"),
    "batch_size": Option(8, "texts per step"),
}
MAX_TOKENS = 64  # training texts truncated: 2-core CPU budget (the metric embeds up to 128)


def check_options(*, student_layers, student_heads, max_steps, time_budget, lr, batch_size, **_) -> None:
    counts = dict(student_layers=student_layers, max_steps=max_steps, batch_size=batch_size)
    for name, value in counts.items():
        if value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if student_heads < 0 or time_budget < 0 or lr <= 0:
        raise ValueError("--student-heads and --time-budget must be >= 0 and --lr > 0")


def build_student(teacher, *, layers, student_heads: int = 0):
    """Teacher layers copied; with `student_heads`, the same weights split into that many heads."""
    student = make_student(teacher, layers=layers, init="teacher")
    if student_heads and student_heads != teacher.config.num_attention_heads:
        if teacher.config.hidden_size % student_heads:
            raise ValueError(f"--student-heads must divide the hidden size {teacher.config.hidden_size}")
        cfg = copy.deepcopy(student.config)
        cfg.num_attention_heads = student_heads
        resplit = type(student)(cfg).to(next(teacher.parameters()).device)
        resplit.load_state_dict(student.state_dict())
        student = resplit
    return student.train()


def training_batches(loaded, *, n_batches: int, batch_size: int, seed: int) -> list[dict]:
    texts = data.docstrings(corpus.split_texts("train"))
    rng = random.Random(seed)
    chosen = [texts[rng.randrange(len(texts))] for _ in range(n_batches * batch_size)]
    return [dict(loaded.tokenizer(chosen[i : i + batch_size], padding=True, truncation=True,
                                  max_length=MAX_TOKENS, return_tensors="pt").to(loaded.device))
            for i in range(0, len(chosen), batch_size)]


def train_config(ctx, *, max_steps, time_budget, lr, **_) -> TrainConfig:
    return TrainConfig(max_steps=max_steps, time_budget=time_budget or None, lr=lr,
                       warmup_steps=max(1, max_steps // 10), seed=ctx.seed, bf16=False)


def prepare(ctx, *, layers=None, **opts):
    """(teacher, student, untouched copy of the student, batches, train config)."""
    if ctx.loaded.kind != "encoder":
        raise ValueError("this method distils a sentence encoder: use --model encoder or a BERT directory")
    teacher = ctx.model.eval()
    n = teacher.config.num_hidden_layers
    k = opts["student_layers"]
    if not 1 <= k <= n:
        raise ValueError(f"--student-layers must be in 1..{n}, got {k}")
    layers = layers or [round(i * (n - 1) / max(1, k - 1)) for i in range(k)]
    student = build_student(teacher, layers=layers, student_heads=opts["student_heads"])
    batches = training_batches(ctx.loaded, n_batches=opts["max_steps"], batch_size=opts["batch_size"],
                               seed=ctx.seed)
    return teacher, student, copy.deepcopy(student), batches, train_config(ctx, **opts)


def token_mask(batch: dict) -> torch.Tensor:
    """(b, seq) bool: real tokens (not padding)."""
    return batch["attention_mask"].bool()


def finish(ctx, teacher, student, baseline, result: TrainResult, *, extra: dict | None = None) -> dict:
    """Score the untrained baseline against the teacher, hand the student to the runner, report."""
    ref = evaluate.encoder_reference(ctx.loaded)
    base_loaded = LoadedModel("baseline", baseline.eval(), ctx.loaded.tokenizer, adapter_for(baseline),
                              ctx.device)
    base = evaluate.evaluate_encoder(base_loaded, ref)
    ctx.loaded.model = student.eval()
    ctx.loaded.adapter = adapter_for(student)
    out = {"cosine_no_distill": base["cosine"], "retrieval_agreement_no_distill": base["retrieval_agreement"],
           "teacher_params": sum(p.numel() for p in teacher.parameters()),
           "student_params": sum(p.numel() for p in student.parameters()),
           "student_layers": student.config.num_hidden_layers,
           "student_heads": student.config.num_attention_heads}
    out.update(result.summary("distill"))
    out.update(extra or {})
    return out
