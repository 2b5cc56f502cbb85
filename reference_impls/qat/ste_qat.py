"""STE quantization-aware training: the baseline every QAT paper for LLMs starts from.

The straight-through estimator is from "Estimating or Propagating Gradients Through Stochastic Neurons
for Conditional Computation" (Bengio, Léonard, Courville; arXiv 1308.3432), catalog record `ste`;
QAT with it is the "fake quantization" training of Jacob et al. (arXiv 1712.05877) and of LLM-QAT,
EfficientQAT and BitNet, which each add their own ingredient on top.

Every block linear computes with Ŵ = s·(clamp(⌊W/s⌉ + z, 0, 2^b − 1) − z) of a latent float weight W;
the backward pass treats ⌊·⌉ as the identity, so ∂L/∂W = ∂L/∂Ŵ inside the clip range and 0 outside
(the clamp's own gradient). The grid (s, z per group of `group_size` inputs, asymmetric min-max, the
official GPTQ conventions) is fixed at the RTN grid of the starting weights, so training moves weights
between the levels of a grid that does not move; all parameters train (embeddings, norms and head
stay 16-bit), with next-token cross-entropy on the calibration windows. At the end every latent
weight is rounded once more and stored as integer codes (`common.qat.QuantLinear`).

Implemented (fidelity: simplified): STE fake quantization with a fixed grid, full-model training.
Not implemented: learned or re-estimated clipping ranges (PACT, LSQ: those are other methods), a real
pre-training-scale data budget — here a few minutes on the calibration text.
"""

from __future__ import annotations

from reference_impls.common.fake_quant import swap_model_linears
from reference_impls.common.qat import (
    RECOVERY_BENCH,
    QuantLinear,
    check_recovery,
    qat_linears,
    recover,
    recovery_metrics,
    recovery_options,
    trainable,
)
from reference_impls.common.registry import register
from reference_impls.common.training import causal_lm_loss


def to_quant_linear(_name, w, layer) -> QuantLinear:
    """A trained FakeQuantLinear -> the integer codes of its latent weight on its (fixed) grid."""
    grid = layer.weight_quant
    zero = grid.zero.detach().round().clamp(0, 2**grid.bits - 1)
    return QuantLinear(grid.codes(w), grid.scale.detach(), zero, layer.bias, bits=grid.bits)


@register(
    "ste-qat", family="qat", papers=["ste"], fidelity="simplified",
    summary="Fake-quantized weights on a fixed RTN grid, trained with the straight-through estimator",
    options=recovery_options(lr=1e-4), bench=RECOVERY_BENCH, bench_models=("causal",),
)
def run_ste_qat(ctx, *, bits, group_size, max_steps, time_budget, lr) -> dict:
    check_recovery(bits=bits, max_steps=max_steps, time_budget=time_budget, lr=lr)
    qat_linears(ctx, bits=bits, group_size=group_size)  # at init Ŵ is exactly the RTN weight
    before = ctx.heldout_perplexity()
    model = ctx.model.train()
    params = trainable(model.parameters())
    result = recover(ctx, params, causal_lm_loss(model), max_steps=max_steps, time_budget=time_budget, lr=lr)
    model.eval()
    swap_model_linears(model, ctx.adapter, to_quant_linear)  # what a deployment stores: codes, s, z
    return recovery_metrics(perplexity_before=before, result=result,
                            trainable_params=sum(p.numel() for p in params), bits=bits)
