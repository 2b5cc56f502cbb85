"""KD: "Distilling the Knowledge in a Neural Network" (Hinton, Vinyals, Dean; arXiv 1503.02531);
catalog record `hinton-kd`.

The student is trained on the teacher's soft targets — its distribution softened by a temperature T —
together with the hard labels: L = α · T² · KL(p_T^(T) ‖ p_S^(T)) + (1 − α) · CE(y, p_S), the T² keeping
the soft-target gradient's scale independent of T (§2 of the paper). On a language model this is
token-level (word-level) KD: every next-token position is one classification.

Implemented (fidelity: exact for the objective): the loss above with `losses.forward_kl`, on training
windows of the corpus, for a student built by `make_student`; the teacher frozen. After a pruning stage
(`atlas run sparsegpt+kd`, `wanda+kd`) the pruned model is the student and the dense original the
teacher: KD-based recovery, the pruned weights kept at zero (see `_causal.py`).
Not in the paper / not here: the paper's ensembles and specialist models; its MNIST and speech setups.
"""

from __future__ import annotations

import torch.nn.functional as F

from reference_impls.common.registry import Option, register
from reference_impls.common.training import TeacherStudent, train
from reference_impls.distillation import _causal
from reference_impls.distillation.losses import forward_kl


def kd_loss(student_logits, teacher_logits, labels, *, temperature: float, alpha: float):
    """α·T²·KL(p_T‖p_S) at temperature T + (1 − α)·CE(labels); logits (b, seq, V) predict labels (b, seq)."""
    soft = forward_kl(student_logits, teacher_logits, temperature=temperature)
    if alpha == 1.0:
        return soft
    hard = F.cross_entropy(student_logits.flatten(0, -2).float(), labels.flatten())
    return alpha * soft + (1 - alpha) * hard



@register(
    "kd", family="distillation", papers=["hinton-kd"], fidelity="exact",
    summary="Hinton KD: soft targets at temperature T (T² scaled) + hard labels, token-level on a causal LM",
    options={**_causal.STUDENT_OPTIONS,
             "temperature": Option(2.0, "softmax temperature T of both distributions"),
             "alpha": Option(0.5, "weight of the soft-target loss (1 − alpha on the hard labels)")},
    bench=[{}], bench_models=("causal",),
)
def run_kd(ctx, *, temperature: float, alpha: float, **opts) -> dict:
    _causal.check_options(**opts)
    if temperature <= 0 or not 0 <= alpha <= 1:
        raise ValueError(f"--temperature must be > 0 and --alpha in [0, 1], got {temperature}, {alpha}")
    setup = _causal.prepare(ctx, **opts)
    pair = TeacherStudent(setup.teacher, setup.student)

    def loss_fn(batch):
        s, t = pair(batch)
        ids = batch["input_ids"]
        return kd_loss(s.logits[:, :-1], t.logits[:, :-1], ids[:, 1:].to(s.logits.device),
                       temperature=temperature, alpha=alpha)

    result = train(setup.student.parameters(), loss_fn, setup.batch_at, setup.cfg)
    return _causal.finish(ctx, setup, result)
