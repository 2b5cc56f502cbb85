"""PEQA: "Memory-Efficient Fine-Tuning of Compressed Large Language Models via sub-4-bit Integer
Quantization" (Kim, Lee, Kim, Park, Yoo, Kwon, Lee; arXiv 2305.14152, NeurIPS 2023); record `peqa`.

Each linear is quantized once into an integer matrix and scales, Ŵ = s₀·(W̄ − z₀) with
W̄ = clamp(⌊W₀/s₀⌉ + z₀, 0, 2^b − 1) (round-to-nearest start); fine-tuning then updates only the
scales, Ŵ = (s₀ + Δs)·(W̄ − z₀): W̄ and z₀ never change, so the model stays quantized throughout
and a task is a vector of scales. Training Δs is the same as training s = s₀ + Δs from s₀ (AdamW).

Implemented (fidelity: exact for the method): RTN integer codes (asymmetric min-max, the GPTQ grid of
`common/qat.py`) held in a uint8 buffer, zero points frozen, the per-channel (`--group-size -1`, the
paper's main setting) or per-group scales as the only trainable parameters of the whole model
(embeddings, norms and head frozen too), next-token loss on the calibration windows.
Not implemented: the paper's task data (Wikitext/PTB adaptation, Alpaca instruction tuning) and its
steps — here a fixed few-minute budget on the project's corpus; OPTQ-initialised codes (an ablation).
"""

from __future__ import annotations

from reference_impls.common.qat import (
    RECOVERY_BENCH,
    check_recovery,
    quantize_model,
    recover,
    recovery_metrics,
    recovery_options,
)
from reference_impls.common.registry import register
from reference_impls.common.training import causal_lm_loss


@register(
    "peqa", family="qat", papers=["peqa"], fidelity="exact",
    summary="Integer weights frozen; only the quantization scales are fine-tuned",
    options=recovery_options(lr=5e-4), bench=RECOVERY_BENCH, bench_models=("causal",),
)
def run_peqa(ctx, *, bits, group_size, max_steps, time_budget, lr) -> dict:
    check_recovery(bits=bits, max_steps=max_steps, time_budget=time_budget, lr=lr)
    linears = quantize_model(ctx, bits=bits, group_size=group_size)  # W̄, s₀, z₀
    before = ctx.heldout_perplexity()
    model = ctx.model
    model.requires_grad_(False)
    scales = [m.scale for m in linears.values()]
    for s in scales:
        s.requires_grad_(True)  # s₀ + Δs is the only thing that trains
    model.train()
    result = recover(ctx, scales, causal_lm_loss(model), max_steps=max_steps, time_budget=time_budget, lr=lr)
    model.eval()
    for s in scales:
        s.requires_grad_(False)
    return recovery_metrics(perplexity_before=before, result=result,
                            trainable_params=sum(s.numel() for s in scales), bits=bits)
