"""TinyBERT: "TinyBERT: Distilling BERT for Natural Language Understanding" (Jiao et al.; arXiv
1909.10351, Findings of EMNLP 2020); catalog record `tinybert`.

Transformer distillation (§3.1) matches, through a layer map n = g(m), the student's embeddings
(L_embd = MSE(E_S W_e, E_T)), each student layer's attention matrices (L_attn = (1/h) Σ_heads
MSE(A_S, A_T)) and hidden states (L_hidn = MSE(H_S W_h, H_T)), and, in task-specific distillation, the
prediction layer (soft cross-entropy of the logits). The uniform map g(m) = m·N/M pairs student layer m
with teacher layer m·N/M.

Implemented (fidelity: simplified): general distillation — L = L_embd + Σ_m (L_attn + L_hidn) over the
uniform layer map (2 of 6: teacher layers 3 and 6; 3 of 6: 2, 4, 6), hidden states as transformers
returns them (index 0 the embedding output); attention on the softmax-normalised weights over real query
rows (the official code compares pre-softmax scores with masked entries zeroed); W_e = W_h a single
learnable projection, as the official `fit_dense`, only when the widths differ — this student keeps the
teacher's width and starts from the teacher's layers, so it is matched directly. Not here: the
prediction-layer loss and task-specific stage (no task head), data augmentation, a narrower student.
"""

from __future__ import annotations

import torch.nn.functional as F

from reference_impls.common.registry import register
from reference_impls.common.training import TeacherStudent, cycle, train
from reference_impls.distillation import _encoder


def layer_map(n_student: int, n_teacher: int) -> list[int]:
    """g(m) = m·N/M for m = 1..M (1-indexed layers; hidden_states[g] is teacher layer g's output)."""
    if n_teacher % n_student:
        raise ValueError(f"the uniform map needs N divisible by M, got N={n_teacher}, M={n_student}")
    return [m * n_teacher // n_student for m in range(1, n_student + 1)]


def tinybert_loss(s, t, mask, g: list[int]):
    """L_embd + Σ_m (L_attn + L_hidn); s, t: outputs with hidden_states and attentions."""
    loss = F.mse_loss(s.hidden_states[0], t.hidden_states[0])
    q = mask[:, None, :, None]  # (b, 1, seq, 1): real query rows
    for m, n in enumerate(g, start=1):
        A_s, A_t = s.attentions[m - 1], t.attentions[n - 1]  # (b, heads, seq, seq)
        loss = loss + ((A_s - A_t) ** 2 * q).sum() / (q.sum() * A_s.shape[1] * A_s.shape[-1])
        loss = loss + F.mse_loss(s.hidden_states[m], t.hidden_states[n])
    return loss


@register(
    "tinybert", family="distillation", papers=["tinybert"], fidelity="simplified",
    summary="TinyBERT general distillation: embedding, attention and hidden-state MSE over a layer map",
    options=dict(_encoder.ENCODER_OPTIONS),
    bench=[{"max_steps": 60}], bench_models=("encoder",),
)
def run_tinybert(ctx, **opts) -> dict:
    _encoder.check_options(**opts)
    n_teacher = ctx.model.config.num_hidden_layers
    g = layer_map(opts["student_layers"], n_teacher)
    if opts["student_heads"] and opts["student_heads"] != ctx.model.config.num_attention_heads:
        raise ValueError("--student-heads: TinyBERT's attention loss needs the teacher's head count")
    teacher, student, baseline, batches, cfg = _encoder.prepare(ctx, layers=[n - 1 for n in g], **opts)
    pair = TeacherStudent(teacher, student, attentions=True)

    def loss_fn(batch):
        s, t = pair(batch, hidden_states=True)
        return tinybert_loss(s, t, _encoder.token_mask(batch), g)

    result = train(student.parameters(), loss_fn, cycle(batches), cfg)
    return _encoder.finish(ctx, teacher, student, baseline, result, extra={"layer_map": g})
