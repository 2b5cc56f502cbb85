"""Instruction-following / chain-of-thought distillation: supervised fine-tuning of a student on a
teacher's full generated responses — the recipe of Alpaca/Vicuna-style instruction distillation and of
chain-of-thought distillation ("Large Language Models Are Reasoning Teachers", Ho, Schmid, Yun; arXiv
2212.10071; "Specializing Smaller Language Models towards Multi-Step Reasoning", Fu et al.; arXiv
2301.12726); no single record is the method.

The teacher answers every training instruction with its own response — here a step-by-step rationale
followed by the answer, ``3+8=11;11+5=16;16+9=25;A:25`` — and the student is trained with next-token
cross-entropy on ``prompt → teacher response`` (the loss on the response tokens only, as SFT does). At
test time the student writes its own rationale and then the answer, which is graded. Baseline: the same
student trained on the teacher's answers alone (``prompt → label``), same examples and steps.

Implemented (fidelity: simplified): response-only SFT on greedy teacher outputs (Reasoning Teachers'
"vanilla" fine-tune-CoT with one sample per question) on the synthetic arithmetic task of
`common/synthetic_task.py` (protocol in `_blackbox.py`). Not here: natural-language instructions, an
LLM teacher, diverse reasoning (several sampled rationales per question), filtering of wrong teacher
outputs (the teacher's mistakes reach the student, as in a plain black-box transfer).
"""

from __future__ import annotations

from reference_impls.common import synthetic_task as st
from reference_impls.common.registry import register
from reference_impls.distillation import _blackbox


def sft_rows(data: _blackbox.TeacherData, *, answers_only: bool = False) -> list:
    """``BOS prompt response EOS`` rows, the loss on the response: the teacher's full response, or its
    label alone for the baseline."""
    targets = data.labels if answers_only else data.responses
    return [st.sequence(q, t) for q, t in zip(data.prompts, targets, strict=True)]


@register(
    "instruct-distill", family="distillation",
    papers=["reasoning-teachers"], fidelity="simplified",
    summary="Chain-of-thought / instruction distillation: SFT on the teacher's generated rationale + answer "
            "vs answers only; synthetic arithmetic task",
    options=dict(_blackbox.OPTIONS), bench=_blackbox.BENCH, bench_models=("causal",),
)
def run_instruct_distill(ctx, **opts) -> dict:
    _blackbox.check_options(**opts)
    setup = _blackbox.prepare(ctx, **opts)
    ours = setup.train(setup.student, sft_rows(setup.data))
    base = setup.train(setup.baseline, sft_rows(setup.data, answers_only=True), steps=ours.steps)
    prompts = [p.prompt for p in setup.test]
    answers = st.generate(setup.student, prompts, max_new_tokens=setup.max_new_tokens)
    base_answers = st.generate(setup.baseline, prompts, max_new_tokens=setup.max_new_tokens)
    return _blackbox.report(setup, student_labels=[st.parse(a)[1] for a in answers],
                            baseline_labels=[st.parse(a)[1] for a in base_answers], ours=ours, base=base,
                            test_answers=answers)
