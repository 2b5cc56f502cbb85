"""QA-LoRA: "QA-LoRA: Quantization-Aware Low-Rank Adaptation of Large Language Models" (Xu, Xie, Gu,
Chen, Chang, Zhang, Chen, Zhang, Tian; arXiv 2309.14717, ICLR 2024); record `qa-lora`.

The base is quantized group-wise, W̃ = α⊙Ŵ + β with one scale α and zero β per group of D_in/L input
channels; the adapter sees the input pooled over the *same* groups, QA(x)·(D_in/L) (Algorithm 1:
average pooling times the group size, i.e. the sum over each group), so A is (r × L) instead of LoRA's
(r × D_in). The adapter's weight is then constant within a group, s·(BA)[o, g] for every input j of
group g, and merges exactly into the zeros: s_g(q − z_g) + s·(BA)_g = s_g(q − z'_g) with
z'_g = z_g − s·(BA)_g / s_g. After merging the model is again integer codes + per-group scale and
(now fractional, 16-bit) zero: no float adapter remains, the codes never change.

What differs from LoRA (so this is not peft's LoRA): the pooled input and the (r × L) A. peft 0.21 has
a QA-LoRA variant only for GPTQ layers; it multiplies the group mean by the number of groups L rather
than by the group size D_in/L (tests/test_finetune_qa_lora.py checks the two differ exactly by that
constant factor on the same A, B).

Implemented (fidelity: exact): asymmetric min-max integer codes (`common/qat.py`, frozen), A Kaiming-
uniform and B zero (LoRA's init, so training starts at the quantized model), scaling α/r with α = 2r,
next-token loss on the calibration windows, then the merge into the zeros; the storage is that of the
merged model (b-bit codes, 16-bit scale and 16-bit zero per group).
Not implemented: the paper's GPTQ-quantized start (here RTN), its Alpaca/FLAN data and MMLU evaluation.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from reference_impls.common.fake_quant import swap_model_linears
from reference_impls.common.qat import (
    QuantLinear,
    check_recovery,
    quantize_model,
    recovery_options,
    train_adapters,
)
from reference_impls.common.registry import Option, register
from reference_impls.common.storage import SCALE_BITS


class QALoRALinear(nn.Module):
    """A frozen group-quantized linear plus the group-pooled adapter: y = base(x) + s·B·A·QA(x)·(D_in/L)."""

    def __init__(self, base: QuantLinear, *, rank: int, alpha: float):
        super().__init__()
        self.base = base
        self.n_groups = base.scale.shape[1]  # L
        self.lora_A = nn.Parameter(torch.empty(rank, self.n_groups))  # (r, L)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank))  # (out, r)
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # LoRA's init of A
        self.scaling = alpha / rank

    @property
    def weight(self) -> torch.Tensor:
        """The effective (out, in) weight: base + the adapter's per-group constant."""
        delta = self.scaling * (self.lora_B @ self.lora_A)  # (out, L)
        return self.base.weight + delta.repeat_interleave(self.base.in_features // self.n_groups, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.reshape(*x.shape[:-1], self.n_groups, -1).sum(-1)  # QA(x)·(D_in/L): (..., L)
        delta = pooled @ self.lora_A.t().to(x.dtype) @ self.lora_B.t().to(x.dtype)  # (..., out)
        return self.base(x) + delta * self.scaling

    @torch.no_grad()
    def merge(self) -> QuantLinear:
        """The adapter folded into the zeros: z' = z − s·(BA)/scale per (row, group); codes unchanged."""
        delta = self.scaling * (self.lora_B @ self.lora_A)  # (out, L): the weight added to every input of g
        merged = QuantLinear(self.base.codes, self.base.scale, self.base.zero - delta / self.base.scale,
                             self.base.bias, bits=self.base.bits)
        return merged


OPTIONS = {**recovery_options(lr=1e-3, group_size=32), "rank": Option(8, "adapter rank r (A is r × groups)")}


@register(
    "qa-lora", family="finetuning", papers=["qa-lora"], fidelity="exact",
    summary="Group-pooled adapters on a group-quantized base, merged into the zero points (stays integer)",
    options=OPTIONS, bench=[{"bits": 3}, {"bits": 2}], bench_models=("causal",),
)
def run_qa_lora(ctx, *, bits, group_size, max_steps, time_budget, lr, rank) -> dict:
    check_recovery(bits=bits, max_steps=max_steps, time_budget=time_budget, lr=lr)
    if rank < 1:
        raise ValueError(f"--rank must be at least 1, got {rank}")
    quantize_model(ctx, bits=bits, group_size=group_size)
    before = ctx.heldout_perplexity()
    ctx.model.requires_grad_(False)
    swap_model_linears(ctx.model, ctx.adapter,
                       lambda _n, _w, old: QALoRALinear(old, rank=rank, alpha=2 * rank))
    metrics = train_adapters(ctx, ctx.model, before=before, bits=bits, max_steps=max_steps,
                             time_budget=time_budget, lr=lr, extra={"rank": rank})
    metrics["perplexity_adapters_on"] = ctx.heldout_perplexity()
    new = swap_model_linears(ctx.model, ctx.adapter, lambda _n, _w, old: old.merge())
    for name, m in new.items():  # b-bit codes, 16-bit scale and (fractional) 16-bit zero per group
        ctx.ledger.add(name, m.codes.numel(), bits * m.codes.numel() + 2 * SCALE_BITS * m.scale.numel())
        ctx.ledger.layers.pop(f"{name}.adapters", None)  # merged: no adapter is stored any more
    return metrics
