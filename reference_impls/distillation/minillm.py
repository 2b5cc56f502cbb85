"""MiniLLM: "MiniLLM: On-Policy Distillation of Large Language Models" (Gu, Dong, Wei, Huang; arXiv
2306.08543, ICLR 2024); catalog record `minillm`.

The student q_θ minimises the *reverse* KL(q_θ ‖ p) over whole responses, optimised by policy gradient
(eq. 2-4) with three refinements (§2.2): single-step decomposition — the expected one-step reward is
taken exactly over the vocabulary, so that term is the token-level reverse KL Σ_t KL(q_θ(·|y<t) ‖
p(·|y<t)) on the student's samples (eq. 5, `(∇L)_Single`), leaving the policy gradient for the
long-term part (`(∇L)_Long`); teacher-mixed sampling — responses drawn from p̃ = α·p + (1−α)·q_θ
(α = 0.2) with importance weights w_t = q_θ(y_t|·)/p̃(y_t|·) per token; length normalisation — the
return R_t is divided by the number of tokens it sums. A language-modelling loss on pre-training data
keeps the student fluent (L_PT).

Implemented (fidelity: simplified), after the official LMOps/minillm code: reward r_t = log p(y_t) −
log q_θ(y_t) (teacher log-probability plus the entropy bonus −log q_θ); return R_t = Σ_{t'≥t} r_t' (γ = 1)
divided by the remaining length, then whitened over the batch as the advantage A_t; policy loss
−mean_t(A_t · w_t · ratio_t) with ratio = q_θ/q_θ_old = 1 at the sampling step (one PPO epoch per
rollout, so its clipping never binds); plus the single-step term, mean reverse KL on the sampled
positions; plus `lm_coef` × cross-entropy on the fixed training window (L_PT). Simplified: one
gradient step per rollout instead of PPO's several epochs over a rollout buffer, fixed-length
responses with no end-of-text stop, no reward clipping/scaling, no SFT warm-start of the student.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from reference_impls.common.registry import Option, register
from reference_impls.common.training import TeacherStudent, train
from reference_impls.distillation import _causal
from reference_impls.distillation.losses import reverse_kl


def minillm_loss(s_logits: torch.Tensor, t_logits: torch.Tensor, tokens: torch.Tensor, *,
                 teacher_mix: float, single_step: bool = True) -> tuple[torch.Tensor, dict]:
    """Policy-gradient + single-step loss on responses: logits (b, G, V) predict `tokens` (b, G)."""
    log_q = F.log_softmax(s_logits.float(), -1)  # (b, G, V), with grad
    log_p = F.log_softmax(t_logits.float(), -1)  # (b, G, V)
    lq = log_q.gather(-1, tokens[..., None]).squeeze(-1)  # (b, G) log q_θ(y_t)
    with torch.no_grad():
        lp = log_p.gather(-1, tokens[..., None]).squeeze(-1)  # (b, G) log p(y_t)
        r = lp - lq  # teacher reward + entropy bonus
        G = r.shape[1]
        R = r.flip(1).cumsum(1).flip(1) / torch.arange(G, 0, -1, device=r.device)  # length-normalised return
        A = (R - R.mean()) * torch.rsqrt(R.var() + 1e-8)  # whitened advantage
        w = torch.ones_like(lq)
        if teacher_mix > 0:  # importance weight of the teacher-mixed proposal
            mix = torch.logaddexp(lq + torch.log1p(torch.tensor(-teacher_mix)), lp + torch.log(
                torch.tensor(teacher_mix)))
            w = (lq - mix).exp()
    ratio = (lq - lq.detach()).exp()  # = 1, gradient ∇log q_θ
    pg = -(A * w * ratio).mean()
    loss = pg + (reverse_kl(s_logits, t_logits) if single_step else 0.0)
    return loss, {"reward": float(r.sum(1).mean() / G), "pg_loss": float(pg.detach())}


@register(
    "minillm", family="distillation", papers=["minillm"], fidelity="simplified",
    summary="MiniLLM: reverse-KL policy gradient, single-step decomposition, teacher-mixed sampling",
    options={**_causal.STUDENT_OPTIONS,
             "teacher_mix": Option(0.2, "α: share of the teacher in the sampling distribution"),
             "lm_coef": Option(1.0, "weight of the language-modelling loss on the fixed window (L_PT)"),
             "single_step": Option(True, "add the exact single-step (token-level reverse KL) term"),
             "gen_tokens": Option(32, "tokens sampled after each prompt")},
    bench=[{"max_steps": 20}], bench_models=("causal",),  # a rollout per step: 20 fit the CPU budget
)
def run_minillm(ctx, *, teacher_mix: float, lm_coef: float, single_step: bool, gen_tokens: int,
                **opts) -> dict:
    _causal.check_options(**opts)
    if not 0 <= teacher_mix < 1 or lm_coef < 0:
        raise ValueError(f"--teacher-mix must be in [0, 1) and --lm-coef >= 0, got {teacher_mix}, {lm_coef}")
    if not 2 <= gen_tokens < opts["seq_len"]:
        raise ValueError(f"--gen-tokens must be in 2..seq_len-1, got {gen_tokens}")
    setup = _causal.prepare(ctx, **opts)
    pair = TeacherStudent(setup.teacher, setup.student)
    prompt_len = opts["seq_len"] - gen_tokens
    rewards: list[float] = []

    def loss_fn(batch):
        ids = batch["input_ids"]
        y = _causal.sample(setup.student, ids[:, :prompt_len], max_new_tokens=gen_tokens,
                           teacher=setup.teacher, teacher_mix=teacher_mix)
        s, t = pair({"input_ids": y})
        start = prompt_len - 1
        loss, stats = minillm_loss(s.logits[:, start:-1], t.logits[:, start:-1], y[:, prompt_len:],
                                   teacher_mix=teacher_mix, single_step=single_step)
        rewards.append(stats["reward"])
        if lm_coef:
            logits = setup.student(input_ids=ids, use_cache=False).logits[:, :-1]
            loss = loss + lm_coef * F.cross_entropy(logits.flatten(0, 1).float(), ids[:, 1:].flatten())
        return loss

    result = train(setup.student.parameters(), loss_fn, setup.batch_at, setup.cfg)
    k = max(1, len(rewards) // 10)
    return _causal.finish(ctx, setup, result, extra={
        "reward_first": sum(rewards[:k]) / k, "reward_last": sum(rewards[-k:]) / k})
