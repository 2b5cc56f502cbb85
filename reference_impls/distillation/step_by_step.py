"""Distilling step-by-step: "Distilling Step-by-Step! Outperforming Larger Language Models with Less
Training Data and Smaller Model Sizes" (Hsieh, Li, Yeh, Nakhost, Fujii, Ratner, Krishna, Lee, Pfister;
arXiv 2305.02301, ACL 2023 Findings); record `distilling-step-by-step`.

A teacher, prompted with chain-of-thought, answers the unlabelled training inputs with a rationale and a
label. The student is trained multi-task on those outputs: with the task prefix ``[label]`` it predicts
the label from the input, with ``[rationale]`` it generates the rationale (§3.2):

    L = L_label + λ · L_rationale,   both the cross-entropy of the target tokens given prefix + input

(the official code writes it α·L_label + (1 − α)·L_rationale with α = 0.5, the same objective up to a
factor 2 at λ = 1, the paper's value). At test time only the ``[label]`` task runs: the rationale shapes
the student's representation but is never generated, so inference costs no extra tokens. Baseline:
standard distillation, the same student trained on the teacher's labels alone, same examples and steps.

Implemented (fidelity: simplified): the objective above, with the teacher's greedy outputs as the only
training signal, on the synthetic multi-step arithmetic task of `common/synthetic_task.py` (protocol in
`_blackbox.py`). Not here: the paper's PaLM-540B teacher with few-shot CoT prompting, T5
encoder-decoder students (ours are decoder-only Llamas of 0.1 M parameters), its four NLP benchmarks and
its data-size sweeps.
"""

from __future__ import annotations

import torch

from reference_impls.common import synthetic_task as st
from reference_impls.common.registry import Option, register
from reference_impls.distillation import _blackbox


def step_by_step_loss(model, label_batch: dict, rationale_batch: dict, *, rationale_weight: float
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(L_label + λ·L_rationale, L_label, L_rationale) on two batches of the same inputs, one carrying
    the ``[label]`` prefix and the label target, the other ``[rationale]`` and the rationale target."""
    label_loss = st.lm_loss(model, label_batch)
    rationale_loss = st.lm_loss(model, rationale_batch)
    return label_loss + rationale_weight * rationale_loss, label_loss, rationale_loss


def task_rows(data: _blackbox.TeacherData) -> tuple[list, list]:
    """(label rows, rationale rows): ``BOS [label] prompt label EOS`` and ``BOS [rationale] prompt
    rationale EOS``, targets taken from the teacher's responses."""
    labels = [st.sequence(q, y, prefix=st.LABEL) for q, y in zip(data.prompts, data.labels, strict=True)]
    rationales = [st.sequence(q, r, prefix=st.RATIONALE)
                  for q, r in zip(data.prompts, data.rationales, strict=True)]
    return labels, rationales


@register(
    "step-by-step", family="distillation", papers=["distilling-step-by-step"], fidelity="simplified",
    summary="Distilling step-by-step: student trained on teacher labels + rationales (task prefixes), "
            "predicts labels directly; synthetic arithmetic task",
    options={**_blackbox.OPTIONS,
             "rationale_weight": Option(1.0, "λ, weight of the rationale-generation loss")},
    bench=_blackbox.BENCH, bench_models=("causal",),
)
def run_step_by_step(ctx, *, rationale_weight: float, **opts) -> dict:
    _blackbox.check_options(**opts)
    if rationale_weight < 0:
        raise ValueError(f"--rationale-weight must be >= 0, got {rationale_weight}")
    setup = _blackbox.prepare(ctx, **opts)
    label_rows, rationale_rows = task_rows(setup.data)
    # one row index -> the same example in both tasks, so both tasks see the same inputs each step
    paired = list(zip(label_rows, rationale_rows, strict=True))
    model = setup.student

    def collate(rows: list) -> tuple[dict, dict]:
        return st.batch([a for a, _ in rows]), st.batch([b for _, b in rows])

    def loss_fn(batches: tuple[dict, dict]) -> torch.Tensor:
        return step_by_step_loss(model, *batches, rationale_weight=rationale_weight)[0]

    ours = setup.train(model, paired, loss_fn=loss_fn, collate=collate)
    base = setup.train(setup.baseline, label_rows, steps=ours.steps)
    prompts = [p.prompt for p in setup.test]
    ours_labels = st.generate(model, prompts, prefix=st.LABEL, max_new_tokens=setup.max_new_tokens)
    base_labels = st.generate(setup.baseline, prompts, prefix=st.LABEL, max_new_tokens=setup.max_new_tokens)
    out = _blackbox.report(setup, student_labels=ours_labels, baseline_labels=base_labels, ours=ours,
                           base=base)
    # the rationale task of the trained student, graded for the record (not used for its predictions)
    rationales = st.generate(model, prompts, prefix=st.RATIONALE, max_new_tokens=setup.max_new_tokens)
    out["student_rationale_ok"] = sum(st.rationale_ok(p, r) for p, r in
                                      zip(setup.test, rationales, strict=True)) / len(prompts)
    out["rationale_weight"] = rationale_weight
    return out

