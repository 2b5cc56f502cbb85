"""GKD: "On-Policy Distillation of Language Models: Learning from Self-Generated Mistakes" (Agarwal et
al.; arXiv 2306.13649, ICLR 2024); catalog record `gkd`.

Generalized KD trains the student on a mixture of fixed data and its own samples: with probability λ
a batch is the student's on-policy continuations of the prompts (sampled at temperature τ, no gradient
through the sampling), otherwise the fixed sequences; on either, the token-level divergence
D(p_T ‖ p_S)(y|x) — here JSD(β) of `losses.generalized_jsd` — is averaged over the output tokens
(Algorithm 1). λ = 0 is supervised KD on fixed data, λ = 1 purely on-policy.

Implemented (fidelity: exact for the objective and the λ mixture, as TRL's GKDTrainer does it per
batch): prompts are the first `seq_len − gen_tokens` tokens of a training window; on-policy batches
score the `gen_tokens` generated positions, fixed-data batches every position of the window (each
prefix of unconditional text is a prompt). Not here: the paper's tasks (summarisation, translation,
GSM8K), RLHF-style reward terms, teacher-generated sequences as the fixed data (that is `seqkd`).
"""

from __future__ import annotations

import torch

from reference_impls.common.registry import Option, register
from reference_impls.common.training import TeacherStudent, train
from reference_impls.distillation import _causal
from reference_impls.distillation.losses import generalized_jsd


@register(
    "gkd", family="distillation", papers=["gkd"], fidelity="exact",
    summary="GKD: JSD(β) on a λ-mixture of the student's own samples and fixed data",
    options={**_causal.STUDENT_OPTIONS,
             "lmbda": Option(0.5, "probability that a batch is the student's own samples (λ)"),
             "beta": Option(0.5, "β of the generalized JSD (0: KL(p_T‖p_S), 1: KL(p_S‖p_T))"),
             "gen_tokens": Option(32, "tokens the student generates after each prompt"),
             "sample_temperature": Option(1.0, "temperature of the student's sampling")},
    bench=[{"max_steps": 50}], bench_models=("causal",),
)
def run_gkd(ctx, *, lmbda: float, beta: float, gen_tokens: int, sample_temperature: float, **opts) -> dict:
    _causal.check_options(**opts)
    if not (0 <= lmbda <= 1 and 0 <= beta <= 1):
        raise ValueError(f"--lmbda and --beta must be in [0, 1], got {lmbda}, {beta}")
    if not 1 <= gen_tokens < opts["seq_len"] or sample_temperature <= 0:
        raise ValueError(f"--gen-tokens must be in 1..seq_len-1 and --sample-temperature > 0, got "
                         f"{gen_tokens}, {sample_temperature}")
    setup = _causal.prepare(ctx, **opts)
    pair = TeacherStudent(setup.teacher, setup.student)
    prompt_len = opts["seq_len"] - gen_tokens
    counts = {"on_policy_batches": 0, "fixed_batches": 0}

    def loss_fn(batch):
        ids, start = batch["input_ids"], 0
        if torch.rand(()) < lmbda:  # the loop seeds torch's generator: reproducible
            ids = _causal.sample(setup.student, ids[:, :prompt_len], max_new_tokens=gen_tokens,
                                 temperature=sample_temperature)
            start = prompt_len - 1  # logits at prompt_len-1 .. end-1 predict the generated tokens
            counts["on_policy_batches"] += 1
        else:
            counts["fixed_batches"] += 1
        s, t = pair({"input_ids": ids})
        return generalized_jsd(s.logits[:, start:-1], t.logits[:, start:-1], beta=beta)

    result = train(setup.student.parameters(), loss_fn, setup.batch_at, setup.cfg)
    return _causal.finish(ctx, setup, result, extra=counts)
