"""DistilBERT: "DistilBERT, a distilled version of BERT: smaller, faster, cheaper and lighter" (Sanh,
Debut, Chaumond, Wolf; arXiv 1910.01108); catalog record `distilbert`.

A student with half of BERT's layers, initialised by taking one layer out of two from the teacher, is
pre-trained with a triple loss (§2): L = α_ce·L_ce + α_mlm·L_mlm + α_cos·L_cos — the soft-target
cross-entropy against the teacher's output distribution at temperature T, the masked-LM loss, and a
cosine embedding loss aligning the directions of the student's and teacher's hidden states.

Implemented (fidelity: simplified): the initialisation (every other teacher layer: 0, 2, 4 of 6 for a
3-layer student), L_cos = mean over real tokens of 1 − cos(h_S, h_T) on the last hidden states, and
L_ce = T²·KL(p_T ‖ p_S) (`losses.forward_kl`) with α_ce = 5, α_cos = 1, T = 2, the weights and
temperature of the official `examples/research_projects/distillation` recipe. Simplified: the sentence
encoder ships without its MLM head, so the output distribution is taken through the tied word-embedding
matrix (logits = h·Eᵀ with the teacher's frozen E, the MLM decoder's tied weight without its transform
layer), over every real token rather than only the 15% masked ones; L_mlm is omitted (no head, no
masking); dynamic masking and large-batch training are not reproduced.
"""

from __future__ import annotations

import torch.nn.functional as F

from reference_impls.common.registry import Option, register
from reference_impls.common.training import TeacherStudent, cycle, train
from reference_impls.distillation import _encoder
from reference_impls.distillation.losses import forward_kl


def cosine_loss(h_s, h_t, mask):
    """Mean over real tokens of 1 − cos(h_S, h_T); h (b, seq, d), mask (b, seq)."""
    return (1 - F.cosine_similarity(h_s[mask], h_t[mask], dim=-1)).mean()


@register(
    "distilbert", family="distillation", papers=["distilbert"], fidelity="simplified",
    summary="DistilBERT: every-other-layer init, soft-target (T=2) + hidden-state cosine losses",
    options={**_encoder.ENCODER_OPTIONS,
             "temperature": Option(2.0, "temperature of the soft-target loss"),
             "alpha_ce": Option(5.0, "weight of the soft-target loss"),
             "alpha_cos": Option(1.0, "weight of the cosine embedding loss")},
    bench=[{"max_steps": 60}], bench_models=("encoder",),
)
def run_distilbert(ctx, *, temperature: float, alpha_ce: float, alpha_cos: float, **opts) -> dict:
    _encoder.check_options(**opts)
    if temperature <= 0 or alpha_ce < 0 or alpha_cos < 0:
        raise ValueError("--temperature must be > 0, --alpha-ce and --alpha-cos >= 0")
    n = ctx.model.config.num_hidden_layers
    layers = list(range(0, n, 2))[: opts["student_layers"]]  # one layer out of two
    if len(layers) < opts["student_layers"]:
        layers = None  # more than half the teacher's depth: evenly spaced instead
    teacher, student, baseline, batches, cfg = _encoder.prepare(ctx, layers=layers, **opts)
    pair = TeacherStudent(teacher, student)
    E = teacher.get_input_embeddings().weight.detach()  # (vocab, d): the MLM decoder's tied weight

    def loss_fn(batch):
        s, t = pair(batch)
        mask = _encoder.token_mask(batch)
        h_s, h_t = s.last_hidden_state, t.last_hidden_state  # (b, seq, d)
        l_ce = forward_kl(h_s[mask] @ E.T, h_t[mask] @ E.T, temperature=temperature)
        return alpha_ce * l_ce + alpha_cos * cosine_loss(h_s, h_t, mask)

    result = train(student.parameters(), loss_fn, cycle(batches), cfg)
    return _encoder.finish(ctx, teacher, student, baseline, result,
                           extra={"student_from_teacher_layers": layers or "evenly spaced"})
