"""DistiLLM: "DistiLLM: Towards Streamlined Distillation for Large Language Models" (Ko, Kim, Chen,
Yun; arXiv 2402.03898, ICML 2024); catalog record `distillm`.

Two parts: (1) the skew KL divergence SKL⁽α⁾(p, q_θ) = KL(p ‖ α·p + (1−α)·q_θ) (or its reverse form
SRKL), whose gradient stays bounded where plain KL's does not (eq. 3, α = 0.1); (2) an adaptive
off-policy schedule for student-generated outputs (SGO): a threshold, raised by 0.1 whenever the
validation loss rises by `loss_eps`, sets the probability of a batch of student outputs; fresh SGO are
generated with probability threshold·(1 − step/total) ("decreasing" replay ratio) and otherwise replayed
from a buffer of past generations, so the student is re-sampled rarely (Algorithm 1).

Implemented (fidelity: exact for the loss and the schedule, transcribed from the official
`finetune.py`: r ~ U(0, 1); generate when r < threshold·(1 − step/total) or (r < threshold and the buffer
is not full); replay when r < threshold; fixed data otherwise; threshold += 0.1 (max 1) when the
validation cross-entropy ≥ previous + loss_eps, which then becomes the previous): validation every
`eval_interval` steps on two calibration batches; loss over generated positions for SGO, every position
for fixed windows. The official skewed forward KL returns the cross-entropy (same gradient; see
losses.py). Not here: the official code's instruction data, the LM pre-training loss term, deepspeed.
"""

from __future__ import annotations

import random
from collections import deque

import torch
import torch.nn.functional as F

from reference_impls.common.registry import Option, register
from reference_impls.common.training import TeacherStudent, train
from reference_impls.distillation import _causal
from reference_impls.distillation.losses import skew_kl, skew_reverse_kl


class AdaptiveSGO:
    """DistiLLM's adaptive off-policy schedule: which source the next batch comes from."""

    def __init__(self, *, init_threshold: float, loss_eps: float, capacity: int, total_steps: int) -> None:
        self.threshold, self.loss_eps, self.total = init_threshold, loss_eps, total_steps
        self.buffer: deque = deque(maxlen=capacity)
        self.prev_val: float | None = None

    def observe_validation(self, val_loss: float) -> None:
        if self.prev_val is None:
            self.prev_val = val_loss
        elif val_loss >= self.prev_val + self.loss_eps:
            self.threshold = min(1.0, self.threshold + 0.1)
            self.prev_val = val_loss

    def choose(self, step: int, r: float) -> str:
        """'generate', 'replay' or 'fixed' for uniform draw r (official finetune.py, 'decreasing')."""
        samp = self.threshold * (1 - step / self.total)
        if r < samp or (r < self.threshold and len(self.buffer) < self.buffer.maxlen):
            return "generate"
        if r < self.threshold:
            return "replay"
        return "fixed"


@register(
    "distillm", family="distillation", papers=["distillm"], fidelity="exact",
    summary="DistiLLM: skew KL + adaptive off-policy student-generated outputs with a replay buffer",
    options={**_causal.STUDENT_OPTIONS,
             "loss": Option("skl", "skew forward (skl) or skew reverse (srkl) KL", choices=("skl", "srkl")),
             "skew_alpha": Option(0.1, "α of the skew divergence"),
             "init_threshold": Option(0.0, "initial probability of student-generated batches"),
             "loss_eps": Option(0.1, "validation-loss rise that raises the threshold by 0.1"),
             "capacity": Option(1000, "replay buffer size (sequences)"),
             "eval_interval": Option(10, "steps between validation-loss checks"),
             "gen_tokens": Option(32, "tokens the student generates after each prompt")},
    bench=[{"max_steps": 50}], bench_models=("causal",),
)
def run_distillm(ctx, *, loss: str, skew_alpha: float, init_threshold: float, loss_eps: float, capacity: int,
                 eval_interval: int, gen_tokens: int, **opts) -> dict:
    _causal.check_options(**opts)
    if not (0 <= skew_alpha < 1 and 0 <= init_threshold <= 1) or capacity < 1 or eval_interval < 1:
        raise ValueError("--skew-alpha must be in [0, 1), --init-threshold in [0, 1], --capacity and "
                         "--eval-interval >= 1")
    if not 1 <= gen_tokens < opts["seq_len"]:
        raise ValueError(f"--gen-tokens must be in 1..seq_len-1, got {gen_tokens}")
    setup = _causal.prepare(ctx, **opts)
    pair = TeacherStudent(setup.teacher, setup.student)
    divergence = skew_kl if loss == "skl" else skew_reverse_kl
    sched = AdaptiveSGO(init_threshold=init_threshold, loss_eps=loss_eps, capacity=capacity,
                        total_steps=opts["max_steps"])
    val = [b["input_ids"][:, : opts["seq_len"]].to(ctx.device) for b in ctx.calibration[:2]]
    prompt_len = opts["seq_len"] - gen_tokens
    state = {"step": 0, "generate": 0, "replay": 0, "fixed": 0}
    rng = random.Random(ctx.seed)

    @torch.no_grad()
    def validation_loss() -> float:
        s = setup.student
        return sum(F.cross_entropy(s(input_ids=x, use_cache=False).logits[:, :-1].flatten(0, 1),
                                   x[:, 1:].flatten()).item() for x in val) / len(val)

    def loss_fn(batch):
        step = state["step"]
        if step % eval_interval == 0:
            sched.observe_validation(validation_loss())
        source = sched.choose(step, float(torch.rand(())))
        ids, start = batch["input_ids"], 0
        if source == "generate":
            ids = _causal.sample(setup.student, ids[:, :prompt_len], max_new_tokens=gen_tokens)
            sched.buffer.extend(ids.unbind(0))
        elif source == "replay":
            ids = torch.stack(rng.sample(list(sched.buffer), min(setup.batch_size, len(sched.buffer))))
        if source != "fixed":
            start = prompt_len - 1
        state[source] += 1
        state["step"] += 1
        s, t = pair({"input_ids": ids})
        return divergence(s.logits[:, start:-1], t.logits[:, start:-1], alpha=skew_alpha)

    result = train(setup.student.parameters(), loss_fn, setup.batch_at, setup.cfg)
    return _causal.finish(ctx, setup, result, extra={
        "sgo_generated_batches": state["generate"], "sgo_replayed_batches": state["replay"],
        "fixed_batches": state["fixed"], "final_threshold": sched.threshold})
