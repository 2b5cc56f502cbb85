"""MiniLM: "MiniLM: Deep Self-Attention Distillation for Task-Agnostic Compression of Pre-Trained
Transformers" (Wang et al.; arXiv 2002.10957, NeurIPS 2020); catalog record `minilm`. With the relation
heads of "MiniLMv2: Multi-Head Self-Attention Relation Distillation" (arXiv 2012.15828).

MiniLM distils only the teacher's *last* Transformer layer into the student's last layer: the
self-attention distributions A = softmax(Q Kᵀ/√d_k) (eq. 7, KL per head and query row) and the
value relation VR = softmax(V Vᵀ/√d_k) (eq. 8-9), so the student's depth and width are free. MiniLMv2
removes v1's requirement of equal head counts: queries, keys and values of all heads are concatenated
and re-split into the same number r of *relation heads* for teacher and student before the relations
are formed.

Implemented (fidelity: exact for the losses): relation(X, Y) = softmax(X_r Y_rᵀ/√d_r) over r relation
heads of the concatenated projections, the loss KL(R_T ‖ R_S) summed over keys, averaged over relation
heads and real query rows, for the Q-K pair (attention distributions) and the V-V pair (value relation):
L = L_AT + L_VR (eq. 10). With r = the teacher's head count and a student of the same count this is
exactly v1's per-head attention and value-relation transfer; with another student head count
(`--student-heads`) it is v2's relation transfer. Padded keys are masked out of every softmax. Not here:
v2's Q-Q and K-K relations and its choice of an upper-middle teacher layer for large teachers; the
paper's pre-training corpus (Wikipedia + BookCorpus) and its randomly initialised students.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from reference_impls.common.registry import Option, register
from reference_impls.common.training import cycle, train
from reference_impls.distillation import _encoder


def relation(x: torch.Tensor, y: torch.Tensor, key_mask: torch.Tensor, n_heads: int) -> torch.Tensor:
    """log softmax(X_r Y_rᵀ/√d_r): x, y (b, seq, d) → (b, r, seq, seq), padded keys (mask False) at −inf."""
    b, n, d = x.shape
    if d % n_heads:
        raise ValueError(f"relation heads ({n_heads}) must divide the width {d}")
    dr = d // n_heads
    xr = x.view(b, n, n_heads, dr).transpose(1, 2)  # (b, r, seq, dr)
    yr = y.view(b, n, n_heads, dr).transpose(1, 2)
    scores = xr @ yr.transpose(-1, -2) / dr**0.5  # (b, r, seq, seq)
    scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    return F.log_softmax(scores.float(), dim=-1)


def relation_kl(log_t: torch.Tensor, log_s: torch.Tensor, query_mask: torch.Tensor) -> torch.Tensor:
    """KL(R_T ‖ R_S) summed over keys, mean over relation heads and real query rows."""
    kl = torch.where(log_t.isinf(), 0.0, log_t.exp() * (log_t - log_s)).sum(-1)  # (b, r, seq)
    q = query_mask[:, None, :].to(kl.dtype)
    return (kl * q).sum() / (q.sum() * kl.shape[1])


def minilm_loss(qkv_s, qkv_t, mask, *, relation_heads: int) -> torch.Tensor:
    """L_AT + L_VR from the last layer's (Q, K, V) of student and teacher, each (b, seq, d)."""
    (q_s, k_s, v_s), (q_t, k_t, v_t) = qkv_s, qkv_t
    r = relation_heads
    l_at = relation_kl(relation(q_t, k_t, mask, r), relation(q_s, k_s, mask, r), mask)  # eq. 7
    l_vr = relation_kl(relation(v_t, v_t, mask, r), relation(v_s, v_s, mask, r), mask)  # eq. 8-9
    return l_at + l_vr


class LastLayerQKV:
    """Forward hooks catching the query, key and value projections of a BERT model's last layer."""

    def __init__(self, model) -> None:
        attn = model.encoder.layer[-1].attention.self
        self.out: dict[str, torch.Tensor] = {}
        for name in ("query", "key", "value"):
            getattr(attn, name).register_forward_hook(self._keep(name))

    def _keep(self, name: str):
        def hook(module, inputs, output):
            self.out[name] = output  # (b, seq, d)
        return hook

    def __call__(self):
        return self.out["query"], self.out["key"], self.out["value"]


@register(
    "minilm", family="distillation", papers=["minilm"], fidelity="exact",
    summary="MiniLM: last-layer attention distributions + value relation, over relation heads",
    options={**_encoder.ENCODER_OPTIONS,
             "relation_heads": Option(0, "relation heads r (0 = the teacher's attention heads)")},
    bench=[{}, {"student_heads": 6}], bench_models=("encoder",),
)
def run_minilm(ctx, *, relation_heads: int, **opts) -> dict:
    _encoder.check_options(**opts)
    if relation_heads < 0:
        raise ValueError(f"--relation-heads must be >= 0, got {relation_heads}")
    teacher, student, baseline, batches, cfg = _encoder.prepare(ctx, **opts)
    r = relation_heads or teacher.config.num_attention_heads
    catch_s, catch_t = LastLayerQKV(student), LastLayerQKV(teacher)
    teacher.requires_grad_(False)

    def loss_fn(batch):
        with torch.no_grad():
            teacher(**batch)
        qkv_t = catch_t()
        student(**batch)
        return minilm_loss(catch_s(), qkv_t, _encoder.token_mask(batch), relation_heads=r)

    result = train(student.parameters(), loss_fn, cycle(batches), cfg)
    return _encoder.finish(ctx, teacher, student, baseline, result, extra={"relation_heads": r})
