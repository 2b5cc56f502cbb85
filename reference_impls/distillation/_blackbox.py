"""What the black-box distillation methods share: the teacher, its outputs on the transfer set, the student.

Protocol (step-by-step, instruct-distill):
- task and teacher = `common/synthetic_task.py`: `n_terms`-term sums (`digits` digits) with step-by-step
  rationales; the teacher, a small Llama trained from scratch on the ground-truth rationales of the
  train split (cached under .atlas/), is the only model that ever sees ground truth;
- transfer set = `n_train` train-split prompts (a seeded sample); the teacher answers each one greedily
  and its responses, parsed into (rationale, label), are *all* the student receives (`TeacherData`:
  prompt strings and teacher text, no `Problem` objects, so no gold label can leak into training);
- student = a smaller Llama over the same vocabulary, random init (`student_layers`, `student_hidden`);
  baseline = the same initial student trained on the teacher's labels only, on the same examples in the
  same order, for the same steps and schedule;
- report = exact-match accuracy on the held-out test split of the student (`task_accuracy`), the baseline
  (`task_accuracy_baseline`) and the teacher (`task_accuracy_teacher`), sizes, steps and wall times.
The project's causal LM loaded by the runner is untouched (its perplexity in the record is not this
method's figure; catalog/results.py ranks these runs by `task_accuracy`).
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass

from reference_impls.common import synthetic_task as st
from reference_impls.common.registry import Option
from reference_impls.common.training import TrainResult

OPTIONS = {
    "n_terms": Option(4, "terms per problem (2-5)"),
    "digits": Option(1, "digits per term: 1 (0-9) or 2 (10-99)"),
    "teacher_layers": Option(2, "decoder layers of the teacher trained on the task"),
    "teacher_hidden": Option(128, "hidden size of the teacher"),
    "teacher_steps": Option(1200, "training steps of the teacher (ground truth; cached on disk)"),
    "student_layers": Option(2, "decoder layers of the student"),
    "student_hidden": Option(64, "hidden size of the student (multiple of 32)"),
    "n_train": Option(2000, "train-split prompts the teacher answers for the student"),
    "max_steps": Option(600, "training steps of the student (the baseline runs as many)"),
    "time_budget": Option(0.0, "wall-clock limit of the student's training in seconds (0 = none)"),
    "lr": Option(3e-3, "peak learning rate (AdamW, warm-up then cosine)"),
    "batch_size": Option(32, "examples per step"),
}
OPTIONS_DEFAULTS = {name: o.default for name, o in OPTIONS.items()}
# `atlas bench`: the default one-digit task (a student can sum four digits without a rationale), and
# three two-digit terms, where it cannot in these steps (the teacher: 2000 steps, 100% on the test split)
BENCH = [{}, {"digits": 2, "n_terms": 3, "teacher_steps": 2000, "n_train": 4000, "max_steps": 2000}]


def check_options(*, n_terms, digits, teacher_layers, teacher_hidden, teacher_steps, student_layers,
                  student_hidden, n_train, max_steps, time_budget, lr, batch_size, **_) -> None:
    """One-line errors naming the option, before any model work."""
    if not 2 <= n_terms <= 5:
        raise ValueError(f"--n-terms must be in 2..5, got {n_terms}")
    if digits not in (1, 2):
        raise ValueError(f"--digits must be 1 or 2, got {digits}")
    st.check_sizes(teacher_layers=teacher_layers, teacher_hidden=teacher_hidden, teacher_steps=teacher_steps,
                   student_layers=student_layers, student_hidden=student_hidden, n_train=n_train,
                   max_steps=max_steps, batch_size=batch_size, time_budget=time_budget, lr=lr)


@dataclass
class TeacherData:
    """What the student is given: prompts and the teacher's responses split into rationale and label."""

    prompts: list[str]
    responses: list[str]

    @property
    def rationales(self) -> list[str]:
        return [st.parse(r)[0] for r in self.responses]

    @property
    def labels(self) -> list[str]:
        return [st.parse(r)[1] for r in self.responses]


@dataclass
class Setup:
    teacher: object
    teacher_figures: dict
    data: TeacherData
    test: list[st.Problem]  # held-out problems, for grading only
    student: object
    baseline: object  # the student's initial state, trained on labels only
    spec: st.TeacherSpec
    opts: dict

    def train(self, model, rows, *, loss_fn=None, collate=None, steps: int | None = None) -> TrainResult:
        """The run's schedule on `rows`; the row order depends on the seed only, so two trainings on
        equally many rows see the same examples in the same order."""
        o = self.opts
        return st.train_on(model, rows, steps=steps or o["max_steps"], batch_size=o["batch_size"], lr=o["lr"],
                           seed=o["seed"], time_budget=None if steps else o["time_budget"] or None,
                           loss_fn=loss_fn, collate=collate)

    @property
    def max_new_tokens(self) -> int:
        return self.spec.max_new_tokens


def prepare(ctx, *, n_terms, digits, teacher_layers, teacher_hidden, teacher_steps, student_layers,
            student_hidden, n_train, **opts) -> Setup:
    spec = st.TeacherSpec(n_terms=n_terms, digits=digits, layers=teacher_layers, hidden=teacher_hidden,
                          steps=teacher_steps)
    teacher, figures = st.teacher(spec)
    train_set, test_set = spec.split()
    if n_train > len(train_set):
        raise ValueError(f"--n-train must be at most {len(train_set)} for --n-terms {n_terms}, got {n_train}")
    prompts = [p.prompt for p in random.Random(ctx.seed).sample(train_set, n_train)]
    data = TeacherData(prompts, st.generate(teacher, prompts, max_new_tokens=spec.max_new_tokens))
    student = st.make_model(layers=student_layers, hidden=student_hidden, seed=ctx.seed)
    return Setup(teacher, figures, data, test_set, student, copy.deepcopy(student), spec,
                 dict(opts, seed=ctx.seed))


def report(setup: Setup, *, student_labels: list[str], baseline_labels: list[str], ours: TrainResult,
           base: TrainResult, test_answers: list[str] | None = None) -> dict:
    """The record's figures; the transfer set's gold labels are read here, for the report only."""
    gold = {p.prompt: p for p in setup.spec.split()[0]}
    transfer = [gold[q] for q in setup.data.prompts]
    out = {"task_accuracy": st.accuracy(student_labels, setup.test),
           "task_accuracy_baseline": st.accuracy(baseline_labels, setup.test),
           "task_accuracy_teacher": setup.teacher_figures["teacher_accuracy"],
           "teacher_label_accuracy_transfer": st.accuracy(setup.data.labels, transfer),
           "test_problems": len(setup.test), "transfer_examples": len(setup.data.prompts),
           "student_params": st.n_params(setup.student),
           "student_layers": setup.student.config.num_hidden_layers,
           "student_hidden": setup.student.config.hidden_size}
    if test_answers is not None:  # the student wrote its own rationales: how many are correct arithmetic
        out["student_rationale_ok"] = sum(st.rationale_ok(p, st.parse(a)[0]) for p, a in
                                          zip(setup.test, test_answers, strict=True)) / len(setup.test)
    out.update({k: v for k, v in setup.teacher_figures.items() if k not in ("teacher_accuracy",)})
    out.update(ours.summary("distill"))
    out.update(base.summary("baseline"))
    return out
