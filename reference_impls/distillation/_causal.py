"""What the causal-LM distillation methods share: the student, the training windows, sampling
continuations (on-policy and teacher-mixed), and the report against a no-distillation baseline.

Protocol (the same for kd, seqkd, minillm, gkd, distillm):
- teacher = the loaded causal LM (frozen); student = `make_student` (by default its first and last
  layers, embeddings and head copied: a 2-layer model of the teacher's width; `--student-init random`
  with `--student-hidden` builds a narrower random-init one);
- data = random windows of `seq_len` tokens from the training split of the committed corpus split
  (never the calibration or held-out modules), drawn with the run's seed; on-policy methods use the
  first `prompt_len` tokens of a window as the prompt and generate the rest;
- baseline = the same initial student trained with next-token cross-entropy on the same windows, in the
  same order, for the same number of steps and the same schedule (`perplexity_no_distill`);
- after an earlier stage of a composition (`atlas run sparsegpt+kd`: the ledger already holds compressed
  matrices), the student is that compressed model itself and the teacher its dense original, reloaded:
  KD-based recovery of a pruned model from its dense self (Minitron / SparseGPT-style recovery); weights
  the pruner zeroed are zeroed again before every step, so the sparsity pattern and its storage cost stay;
  the baseline is the same pruned model recovered with cross-entropy alone. Quantized stages are refused
  (training would leave their grid);
- report = held-out perplexity (the runner, on the student), `heldout_kl` = mean per-token
  KL(p_teacher ‖ p_student) on the runner's held-out windows, the same for the baseline, sizes, steps
  and wall times of both trainings.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from reference_impls.common import corpus, data
from reference_impls.common.adapters import adapter_for
from reference_impls.common.models import load_model
from reference_impls.common.registry import Option
from reference_impls.common.training import TrainConfig, TrainResult, causal_lm_loss, make_student, train

STUDENT_OPTIONS = {
    "student_layers": Option(2, "decoder layers of the student"),
    "student_init": Option("teacher", "teacher: copy evenly spaced teacher layers; random: fresh init",
                           choices=("teacher", "random")),
    "student_hidden": Option(0, "hidden size of a random-init student (0 = the teacher's)"),
    "max_steps": Option(100, "training steps (the baseline runs as many)"),
    "time_budget": Option(0.0, "wall-clock limit of the distillation in seconds (0 = none)"),
    "lr": Option(5e-4, "peak learning rate (AdamW, warm-up then cosine)"),
    "batch_size": Option(8, "windows per step"),
    "seq_len": Option(128, "tokens per training window"),
}
TRAIN_FILES = 80  # training-split files tokenized per run (a seeded sample): ~10^5 tokens, enough windows


def check_options(*, student_layers, student_init, student_hidden, max_steps, time_budget, lr, batch_size,
                  seq_len, **_) -> None:
    """One-line errors naming the option, before any model work."""
    counts = dict(student_layers=student_layers, max_steps=max_steps, batch_size=batch_size)
    for name, value in counts.items():
        if value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if seq_len < 8:
        raise ValueError(f"--seq-len must be at least 8, got {seq_len}")
    if time_budget < 0 or lr <= 0:
        raise ValueError(f"--time-budget must be >= 0 and --lr > 0, got {time_budget}, {lr}")
    if student_hidden and student_init != "random":
        raise ValueError("--student-hidden needs --student-init random (no teacher weights fit)")
    if student_hidden < 0 or student_hidden % 64:
        raise ValueError(f"--student-hidden must be a multiple of 64 (0 = teacher's), got {student_hidden}")


@dataclass
class Setup:
    teacher: torch.nn.Module
    student: torch.nn.Module
    baseline: torch.nn.Module  # the student's initial state, trained later without the teacher
    windows: torch.Tensor  # (max_steps · batch_size, seq_len) training windows, in step order
    cfg: TrainConfig
    batch_size: int
    masks: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)  # pruned student: W != 0

    def project(self, model) -> None:
        """Zero the pruned weights again (the optimizer's last step moved them)."""
        with torch.no_grad():
            for name, mask in self.masks.items():
                model.get_submodule(name).weight.mul_(mask)

    def batch_at(self, step: int) -> dict:
        self.project(self.student)
        self.project(self.baseline)
        i = (step * self.batch_size) % self.windows.shape[0]
        return {"input_ids": self.windows[i : i + self.batch_size]}


def train_windows(loaded, *, n: int, seq_len: int, seed: int) -> torch.Tensor:
    """`n` random windows (n, seq_len) of a seeded sample of training-split files."""
    texts = corpus.split_texts("train")
    texts = random.Random(seed).sample(texts, min(TRAIN_FILES, len(texts)))
    stream = data.token_stream(loaded.tokenizer, texts)
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, stream.numel() - seq_len, (n,), generator=gen)
    return torch.stack([stream[s : s + seq_len] for s in starts.tolist()])


def build_student(teacher, *, student_layers, student_init, student_hidden, seed) -> torch.nn.Module:
    if student_init == "teacher":
        return make_student(teacher, num_layers=student_layers, init="teacher")
    width = {}
    if student_hidden:
        head_dim = teacher.config.hidden_size // teacher.config.num_attention_heads
        width = dict(hidden_size=student_hidden, intermediate_size=3 * student_hidden,
                     num_attention_heads=max(student_hidden // head_dim, teacher.config.num_key_value_heads))
    return make_student(teacher, num_layers=student_layers, init="random", seed=seed, **width)


def prepare(ctx, *, student_layers, student_init, student_hidden, max_steps, time_budget, lr, batch_size,
            seq_len, **_) -> Setup:
    if ctx.loaded.kind != "causal":
        raise ValueError("this method distils a causal LM: use --model causal or a causal LM directory")
    masks = {}
    # an earlier stage compressed the model: recover it from its dense original (in a composition the
    # earlier stages' ledger is ctx.earlier_ledger; applied by hand on one context, it is ctx.ledger)
    earlier = ctx.ledger if ctx.ledger.layers else getattr(ctx, "earlier_ledger", ctx.ledger)
    if earlier.layers:
        teacher, student, masks = compressed_student(ctx, earlier)
    else:
        teacher = ctx.model.eval()
        student = build_student(teacher, student_layers=student_layers, student_init=student_init,
                                student_hidden=student_hidden, seed=ctx.seed).train()
    cfg = TrainConfig(max_steps=max_steps, time_budget=time_budget or None, lr=lr,
                      warmup_steps=max(1, max_steps // 20), seed=ctx.seed, bf16=False)
    windows = train_windows(ctx.loaded, n=max_steps * batch_size, seq_len=seq_len, seed=ctx.seed)
    return Setup(teacher, student, copy.deepcopy(student), windows.to(ctx.device), cfg, batch_size, masks)


def compressed_student(ctx, ledger):
    """(dense teacher reloaded, the compressed model as student, masks of its pruned matrices)."""
    quantized = [n for n, p in ledger.parts.items() if p.value_bits < 16]
    if quantized or set(ledger.layers) - set(ledger.parts):
        raise ValueError("distillation after a quantizing stage would move weights off its grid: "
                         "compose it after a pruning method (e.g. sparsegpt+kd)")
    teacher = load_model(ctx.loaded.name, ctx.device).model.eval()
    student = ctx.model.train()
    masks = {name: (student.get_submodule(name).weight != 0).float() for name in ledger.layers}
    return teacher, student, masks


# ---------------------------------------------------------------- sampling
@torch.no_grad()
def sample(model, prompts: torch.Tensor, *, max_new_tokens: int, temperature: float = 1.0,
           teacher=None, teacher_mix: float = 0.0) -> torch.Tensor:
    """Continue `prompts` (batch, prompt_len) by ancestral sampling; (batch, prompt_len + new) ids.

    With `teacher` and 0 < teacher_mix, each token is drawn from (1 − mix)·q_student + mix·p_teacher
    (MiniLLM's teacher-mixed sampling). Equal-length prompts, no padding, no early stop at end-of-text.
    The global torch generator draws (the training loop seeds it).
    """
    was_training = model.training
    model.eval()
    models = [model] + ([teacher] if teacher is not None and teacher_mix > 0 else [])
    caches = [DynamicCache() for _ in models]
    ids, feed = prompts, prompts
    for _ in range(max_new_tokens):
        logps = [F.log_softmax(m(input_ids=feed, cache=c, use_cache=True).logits[:, -1].float()
                               / temperature, dim=-1) for m, c in zip(models, caches, strict=True)]
        logp = logps[0]
        if len(logps) == 2:
            logp = torch.logaddexp(logp + math.log1p(-teacher_mix), logps[1] + math.log(teacher_mix))
        feed = torch.multinomial(logp.exp(), 1)  # (batch, 1)
        ids = torch.cat([ids, feed], dim=1)
    model.train(was_training)
    return ids


# ---------------------------------------------------------------- evaluation and report
@torch.no_grad()
def heldout_figures(teacher, students: list, windows: torch.Tensor, *, batch_size: int = 8) -> list[dict]:
    """Per student: mean per-token KL(p_T ‖ p_S) and perplexity on `windows` (teacher run once)."""
    device = next(teacher.parameters()).device
    kl = [0.0] * len(students)
    nll = [0.0] * len(students)
    count = 0
    for i in range(0, windows.shape[0], batch_size):
        x = windows[i : i + batch_size].to(device)
        log_t = F.log_softmax(teacher(input_ids=x, use_cache=False).logits[:, :-1].float(), -1)
        for j, s in enumerate(students):
            log_s = F.log_softmax(s(input_ids=x, use_cache=False).logits[:, :-1].float(), -1)
            kl[j] += (log_t.exp() * (log_t - log_s)).sum().item()
            nll[j] -= log_s.gather(-1, x[:, 1:, None]).sum().item()
        count += x[:, 1:].numel()
    return [{"heldout_kl": k / count, "perplexity": math.exp(n / count)}
            for k, n in zip(kl, nll, strict=True)]


def finish(ctx, setup: Setup, result: TrainResult, *, extra: dict | None = None) -> dict:
    """Train the no-distillation baseline, put the student in the runner's model slot, report."""
    base_cfg = dataclasses.replace(setup.cfg, max_steps=result.steps, time_budget=None)
    setup.baseline.train()
    base = train(setup.baseline.parameters(), causal_lm_loss(setup.baseline), setup.batch_at, base_cfg)
    setup.project(setup.student)
    setup.project(setup.baseline)
    setup.student.eval()
    setup.baseline.eval()
    windows = data.heldout_windows(ctx.loaded, max_windows=ctx.eval_windows)
    ours, baseline = heldout_figures(setup.teacher, [setup.student, setup.baseline], windows)
    teacher_params = sum(p.numel() for p in setup.teacher.parameters())
    ctx.loaded.model = setup.student  # the runner evaluates (perplexity) and sizes the student
    ctx.loaded.adapter = adapter_for(setup.student)
    cfg = setup.student.config
    out = {"heldout_kl": ours["heldout_kl"], "perplexity_no_distill": baseline["perplexity"],
           "heldout_kl_no_distill": baseline["heldout_kl"], "teacher_params": teacher_params,
           "student_params": sum(p.numel() for p in setup.student.parameters()),
           "student_layers": cfg.num_hidden_layers, "student_hidden": cfg.hidden_size,
           "train_windows": setup.windows.shape[0], "seq_len": setup.windows.shape[1]}
    if setup.masks:
        kept = sum(int(m.sum()) for m in setup.masks.values())
        out.update(recovered_from_dense=True,
                   student_sparsity=1 - kept / sum(m.numel() for m in setup.masks.values()))
    out.update(result.summary("distill"))
    out.update(base.summary("no_distill"))
    out.update(extra or {})
    return out
