"""A synthetic reasoning task the project generates, and a small teacher trained to solve it step by step.

Black-box distillation (step-by-step, instruction / chain-of-thought distillation, in-context-learning
distillation) needs a teacher that *can do a task* and whose outputs alone are handed to a student. The
project's 6-layer LM cannot do any task worth grading, so these methods use this module instead:

- **task**: the sum of `n_terms` one-digit numbers, e.g. prompt ``Q:3+8+5+9=``, whose step-by-step
  rationale adds one term at a time with carries, ``3+8=11;11+5=16;16+9=25``, and label ``25`` (or of
  two-digit numbers, ``Q:37+48+19=`` → ``37+48=85;85+19=104`` → ``104``). A solver writes
  ``rationale;A:label``. The problems (all of them, or a seeded sample of 30 000 distinct ones) are split
  by a seeded shuffle into disjoint train / test sets (`problems`).
- **vocabulary**: one token per character of ``0123456789+=;:QA`` plus PAD, BOS, EOS and the task
  prefixes ``[label]`` and ``[rationale]`` of Distilling step-by-step, 21 ids (`encode`, `decode`).
- **teacher**: a LlamaForCausalLM built from a config (`TeacherSpec`: layers, hidden size), trained from
  scratch with the shared `training.train` loop on the *ground-truth* rationale + label of the train
  split (the only place ground truth is used for training), and cached on disk under
  ``$ATLAS_CACHE/synthetic/`` (default ``.atlas/``) keyed by every setting (`teacher`); training is seeded,
  so a missing cache is rebuilt to the same model on the same machine.
- **generation and grading**: batched greedy decoding with ``model.generate`` (all prompts of a task have
  the same length, so no padding is involved), `parse` of a response into (rationale, label) and
  exact-match `accuracy` of the labels; `rationale_ok` checks a rationale's arithmetic.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import pickle
import random
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from reference_impls.common.training import TrainConfig, TrainResult, train

CHARS = "0123456789+=;:QA"
PAD, BOS, EOS, LABEL, RATIONALE = range(5)  # special ids; characters follow
SPECIAL = {PAD: "<pad>", BOS: "<s>", EOS: "</s>", LABEL: "[label]", RATIONALE: "[rationale]"}
VOCAB_SIZE = len(SPECIAL) + len(CHARS)
_ID = {c: i + len(SPECIAL) for i, c in enumerate(CHARS)}


@dataclass(frozen=True)
class Problem:
    terms: tuple[int, ...]

    @property
    def prompt(self) -> str:
        return "Q:" + "+".join(map(str, self.terms)) + "="

    @property
    def label(self) -> str:
        return str(sum(self.terms))

    @property
    def rationale(self) -> str:
        """Running sums, one addition per step: 3+8=11;11+5=16;16+9=25."""
        steps, total = [], self.terms[0]
        for t in self.terms[1:]:
            steps.append(f"{total}+{t}={total + t}")
            total += t
        return ";".join(steps)

    @property
    def response(self) -> str:
        return f"{self.rationale};A:{self.label}"


POOL = 30_000  # problems drawn (distinct, seeded) when there are more than this many


def problems(n_terms: int = 4, *, digits: int = 1, seed: int = 0, test_size: int | None = None
             ) -> tuple[list[Problem], list[Problem]]:
    """(train, test): sums of `n_terms` numbers of `digits` digits (one digit: 0-9; two: 10-99), every
    one of them or a seeded sample of `POOL` distinct ones, shuffled with `seed` and split disjointly;
    the test split is `test_size` problems (default: a fifth of them, at most 1000)."""
    if not 2 <= n_terms <= 5:
        raise ValueError(f"--n-terms must be in 2..5, got {n_terms}")
    if digits not in (1, 2):
        raise ValueError(f"--digits must be 1 or 2, got {digits}")
    values = range(10) if digits == 1 else range(10, 100)
    rng = random.Random(seed)
    if len(values) ** n_terms <= POOL:
        grid = [Problem(t) for t in itertools.product(values, repeat=n_terms)]
    else:
        drawn: set[tuple[int, ...]] = set()
        while len(drawn) < POOL:
            drawn.add(tuple(rng.choice(values) for _ in range(n_terms)))
        grid = [Problem(t) for t in sorted(drawn)]
    rng.shuffle(grid)
    if test_size is None:
        test_size = min(1000, len(grid) // 5)
    if not 0 < test_size < len(grid):
        raise ValueError(f"test size must be in 1..{len(grid) - 1}, got {test_size}")
    return grid[test_size:], grid[:test_size]


def encode(text: str) -> list[int]:
    return [_ID[c] for c in text]


def decode(ids) -> str:
    """Characters up to the first EOS or PAD (special prefixes are dropped)."""
    out = []
    for i in (int(x) for x in ids):
        if i in (EOS, PAD):
            break
        if i >= len(SPECIAL):
            out.append(CHARS[i - len(SPECIAL)])
    return "".join(out)


def parse(response: str) -> tuple[str, str]:
    """(rationale, label) of a solver's ``rationale;A:label`` (a bare label: empty rationale)."""
    rationale, sep, label = response.rpartition("A:")
    if not sep:
        return "", response
    return rationale.removesuffix(";"), label


def rationale_ok(problem: Problem, rationale: str) -> bool:
    """True when every step a+b=c of `rationale` is correct arithmetic and the steps add the terms in
    order (each step starting from the previous result)."""
    try:
        steps = [s.split("=") for s in rationale.split(";")]
        total = problem.terms[0]
        for (lhs, rhs), term in zip(steps, problem.terms[1:], strict=True):
            a, b = map(int, lhs.split("+"))
            if (a, b) != (total, term) or int(rhs) != a + b:
                return False
            total = a + b
    except ValueError:
        return False
    return True


def accuracy(labels: list[str], problems_: list[Problem]) -> float:
    """Exact-match accuracy of predicted labels."""
    return sum(a == p.label for a, p in zip(labels, problems_, strict=True)) / len(problems_)


# ---------------------------------------------------------------- sequences
def sequence(prompt: str, target: str, *, prefix: int | None = None) -> tuple[list[int], list[int]]:
    """(ids, loss mask) of ``BOS [prefix] prompt target EOS``; the mask is 1 on the target and EOS only."""
    head = [BOS] + ([prefix] if prefix is not None else []) + encode(prompt)
    tail = encode(target) + [EOS]
    return head + tail, [0] * len(head) + [1] * len(tail)


def batch(rows: list[tuple[list[int], list[int]]]) -> dict[str, torch.Tensor]:
    """Right-padded `input_ids`, `attention_mask` and `labels` (-100 outside the loss mask), for HF's
    shifted causal-LM loss."""
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), PAD)
    labels = torch.full((len(rows), width), -100)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    for r, (seq, mask) in enumerate(rows):
        ids[r, : len(seq)] = torch.tensor(seq)
        attn[r, : len(seq)] = 1
        labels[r, : len(seq)] = torch.tensor([t if m else -100 for t, m in zip(seq, mask, strict=True)])
    return {"input_ids": ids, "attention_mask": attn, "labels": labels}


def lm_loss(model, b: dict) -> torch.Tensor:
    """Mean next-token cross-entropy over the target tokens of a `batch`."""
    return model(**b, use_cache=False).loss


@torch.no_grad()
def generate(model, prompts: list[str], *, prefix: int | None = None, max_new_tokens: int = 40,
             batch_size: int = 256) -> list[str]:
    """Greedy continuations (decoded, up to EOS) of ``BOS [prefix] prompt`` for equal-length prompts."""
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, len(prompts), batch_size):
        rows = [sequence(p, "", prefix=prefix)[0][:-1] for p in prompts[i : i + batch_size]]
        if len({len(r) for r in rows}) != 1:
            raise ValueError("generate needs prompts of equal length (no padding)")
        ids = torch.tensor(rows, device=model.device)
        gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=max_new_tokens, eos_token_id=EOS, pad_token_id=PAD)
        out += [decode(g[ids.shape[1]:]) for g in gen]
    model.train(was_training)
    return out


# ---------------------------------------------------------------- models
def make_model(*, layers: int, hidden: int, seed: int, max_len: int = 64) -> LlamaForCausalLM:
    """A small Llama over the task vocabulary (head dim 32, SwiGLU width 3·hidden), seeded init."""
    if hidden < 32 or hidden % 32 or layers < 1:
        raise ValueError(f"hidden must be a positive multiple of 32 and layers >= 1, got {hidden}, {layers}")
    config = LlamaConfig(vocab_size=VOCAB_SIZE, hidden_size=hidden, intermediate_size=3 * hidden,
                         num_hidden_layers=layers, num_attention_heads=hidden // 32,
                         num_key_value_heads=hidden // 32, max_position_embeddings=max_len,
                         bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD, tie_word_embeddings=True)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).float()


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


@dataclass(frozen=True)
class TeacherSpec:
    n_terms: int = 4
    digits: int = 1
    layers: int = 2
    hidden: int = 128
    steps: int = 1200
    batch_size: int = 64
    lr: float = 3e-3
    seed: int = 0
    test_size: int | None = None  # None: problems()'s default

    def split(self) -> tuple[list[Problem], list[Problem]]:
        return problems(self.n_terms, digits=self.digits, seed=self.seed, test_size=self.test_size)

    @property
    def max_new_tokens(self) -> int:
        return (3 * self.digits + 4) * self.n_terms + 8  # the longest response, with room to spare

    def key(self) -> str:
        settings = asdict(self)
        settings["test_size"] = len(self.split()[1])
        if self.digits == 1:  # keys from before two-digit terms existed stay valid
            del settings["digits"]
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def train_on(model, rows: list, *, steps: int, batch_size: int, lr: float, seed: int,
             time_budget: float | None = None, loss_fn=None, collate=None) -> TrainResult:
    """Train `model` on `rows` with `training.train`, seeded random mini-batches of `batch_size` rows;
    default: rows are (sequence, mask) pairs, collated by `batch`, loss `lm_loss`."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randint(0, len(rows), (steps, batch_size), generator=g)
    cfg = TrainConfig(max_steps=steps, time_budget=time_budget, lr=lr, warmup_steps=max(1, steps // 20),
                      weight_decay=0.01, seed=seed, bf16=False)
    model.train()
    result = train(model.parameters(), loss_fn or (lambda b: lm_loss(model, b)),
                   lambda step: (collate or batch)([rows[i] for i in order[step].tolist()]), cfg)
    model.eval()
    return result


def cache_dir() -> Path:
    return Path(os.environ.get("ATLAS_CACHE", ".atlas")) / "synthetic"


def check_sizes(*, teacher_layers, teacher_hidden, teacher_steps, student_layers, student_hidden, n_train,
                max_steps, batch_size, time_budget, lr) -> None:
    """One-line errors naming the option (the teacher and student options every synthetic-task method
    shares), before any model work."""
    for name, value in dict(teacher_layers=teacher_layers, teacher_steps=teacher_steps,
                            student_layers=student_layers, n_train=n_train, max_steps=max_steps,
                            batch_size=batch_size).items():
        if value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    for name, value in dict(teacher_hidden=teacher_hidden, student_hidden=student_hidden).items():
        if value < 32 or value % 32:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive multiple of 32, got {value}")
    if time_budget < 0 or not lr > 0:
        raise ValueError(f"--time-budget must be >= 0 and --lr > 0, got {time_budget}, {lr}")


def load_cached(path: Path, model) -> dict | None:
    """The cached figures, with `model` loaded from `path`; None (and the folder removed) when the
    cache is damaged or written by other code, so that the caller trains again."""
    try:
        model.load_state_dict(torch.load(path / "model.pt", weights_only=True))
        return json.loads((path / "figures.json").read_text())
    except (OSError, RuntimeError, ValueError, pickle.UnpicklingError):
        shutil.rmtree(path, ignore_errors=True)
        return None


def save_cached(path: Path, model, figures: dict) -> None:
    """Both files in a temporary folder renamed into place: an interrupted write leaves no half cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=path.name + ".", dir=path.parent))
    torch.save(model.state_dict(), tmp / "model.pt")
    (tmp / "figures.json").write_text(json.dumps(figures, indent=1))
    try:
        tmp.rename(path)
    except OSError:  # another process cached the same teacher first
        shutil.rmtree(tmp, ignore_errors=True)


def teacher(spec: TeacherSpec = TeacherSpec(), *, cache: bool = True) -> tuple[LlamaForCausalLM, dict]:
    """(teacher model, its figures): trained on ground-truth rationale + label, or loaded from the cache.

    Figures: `teacher_accuracy` (test split, exact match of the label after its own rationale),
    `teacher_rationale_ok` (share of test rationales with correct arithmetic), params, steps, time.
    """
    path = cache_dir() / f"teacher-{spec.key()}"
    model = make_model(layers=spec.layers, hidden=spec.hidden, seed=spec.seed)
    if cache and path.is_dir():
        figures = load_cached(path, model)
        if figures is not None:
            return model.eval(), figures
        model = make_model(layers=spec.layers, hidden=spec.hidden, seed=spec.seed)
    train_set, test_set = spec.split()
    rows = [sequence(p.prompt, p.response) for p in train_set]
    result = train_on(model, rows, steps=spec.steps, batch_size=spec.batch_size, lr=spec.lr, seed=spec.seed)
    answers = generate(model, [p.prompt for p in test_set], max_new_tokens=spec.max_new_tokens)
    figures = {"teacher_accuracy": accuracy([parse(a)[1] for a in answers], test_set),
               "teacher_rationale_ok": sum(rationale_ok(p, parse(a)[0]) for p, a in
                                           zip(test_set, answers, strict=True)) / len(test_set),
               "teacher_params": n_params(model), "teacher_layers": spec.layers,
               "teacher_hidden": spec.hidden, "teacher_train_steps": result.steps,
               "teacher_train_time_s": round(result.time_s, 2), "teacher_spec": asdict(spec)}
    if cache:
        save_cached(path, model, figures)
    return model.eval(), figures
