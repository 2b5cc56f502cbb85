"""SeqKD: "Sequence-Level Knowledge Distillation" (Kim, Rush; arXiv 1606.07947, EMNLP 2016); catalog
record `seqkd`.

Word-level KD matches the teacher's distribution at each position of the *reference* sequence;
sequence-level KD approximates the teacher's distribution over whole sequences by its mode, found with
beam search, and trains the student with plain negative log-likelihood on the teacher's output ŷ
instead of the reference y (§3.2): L = −log p_S(ŷ | x).

Implemented (fidelity: exact for the objective): for every training window, the teacher continues its
first `seq_len − gen_tokens` tokens (the source x) by beam search (beam 5, the paper's width; `greedy` or
`sample` as options) for exactly `gen_tokens` tokens (transformers' `generate`, end-of-text suppressed
until then) — the first `pool` windows, decoded once and cycled, as the paper decodes its training set
once; the student is trained by cross-entropy on the generated tokens. Not here: Seq-Inter (the
beam closest to the reference by BLEU), combination with word-level KD, weight pruning of the student.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from reference_impls.common.registry import Option, register
from reference_impls.common.training import train
from reference_impls.distillation import _causal


@torch.no_grad()
def teacher_outputs(teacher, windows: torch.Tensor, *, gen_tokens: int, decoding: str, num_beams: int,
                    batch_size: int = 32) -> torch.Tensor:
    """The teacher's continuations of each window's prefix: (n, seq_len), prefix kept, tail replaced."""
    prompt_len = windows.shape[1] - gen_tokens
    out = []
    for i in range(0, windows.shape[0], batch_size):
        x = windows[i : i + batch_size, :prompt_len]
        gen = teacher.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=gen_tokens,
                               min_new_tokens=gen_tokens, do_sample=decoding == "sample",
                               num_beams=num_beams if decoding == "beam" else 1, top_k=0,
                               pad_token_id=teacher.config.pad_token_id)
        out.append(gen[:, : windows.shape[1]])
    return torch.cat(out)


@register(
    "seqkd", family="distillation", papers=["seqkd"], fidelity="exact",
    summary="Sequence-level KD: the student trained by NLL on the teacher's beam-search outputs",
    options={**_causal.STUDENT_OPTIONS,
             "decoding": Option("beam", "how the teacher decodes", choices=("beam", "greedy", "sample")),
             "num_beams": Option(5, "beam width (the paper's 5)"),
             "gen_tokens": Option(32, "tokens the teacher generates after each prefix"),
             "pool": Option(128, "training windows the teacher decodes (cycled over the steps)")},
    bench=[{"max_steps": 50, "pool": 64}], bench_models=("causal",),
)
def run_seqkd(ctx, *, decoding: str, num_beams: int, gen_tokens: int, pool: int, **opts) -> dict:
    _causal.check_options(**opts)
    if not 1 <= gen_tokens < opts["seq_len"] or num_beams < 1:
        raise ValueError(f"--gen-tokens must be in 1..seq_len-1 and --num-beams >= 1, got {gen_tokens}, "
                         f"{num_beams}")
    if pool < opts["batch_size"]:
        raise ValueError(f"--pool must be at least --batch-size, got {pool}")
    setup = _causal.prepare(ctx, **opts)
    setup.windows = setup.windows[:pool]  # the baseline cycles the same windows (their real text)
    t0 = time.perf_counter()
    targets = teacher_outputs(setup.teacher, setup.windows, gen_tokens=gen_tokens, decoding=decoding,
                              num_beams=num_beams)
    gen_time = time.perf_counter() - t0
    start = targets.shape[1] - gen_tokens - 1  # logits at start..end-1 predict the generated tokens
    student = setup.student

    def batch_at(step):
        setup.project(student)  # a pruned student (composition) keeps its zeros
        i = (step * setup.batch_size) % targets.shape[0]
        return targets[i : i + setup.batch_size]

    def loss_fn(ids):
        logits = student(input_ids=ids, use_cache=False).logits[:, start:-1]
        return F.cross_entropy(logits.flatten(0, 1).float(), ids[:, start + 1 :].flatten())

    result = train(student.parameters(), loss_fn, batch_at, setup.cfg)
    distinct = targets[:, -gen_tokens:].unique().numel()
    return _causal.finish(ctx, setup, result, extra={"teacher_generation_time_s": round(gen_time, 3),
                                                     "teacher_output_distinct_tokens": distinct})
