"""EfficientQAT: "EfficientQAT: Efficient Quantization-Aware Training for Large Language Models" (Chen,
Shao, Zhang, Zhang, Gao, Qiao, Luo; arXiv 2407.11027); record `efficientqat`.

Two phases. Block-AP: block by block, every weight of the block's linears *and* their quantization
parameters (step size s, zero point z, the zero rounded with an STE) train with the straight-through
estimator to reproduce the full-precision block's output (MSE), on the inputs the already-quantized
blocks before it produce. E2E-QP: the integer weights are then frozen and only the step sizes train,
end to end, on the next-token loss (as in PEQA).

Implemented (fidelity: simplified): both phases on every block linear, asymmetric min-max groups as
the starting grid (`common/qat.py`), Block-AP for `--block-steps` steps per block over the calibration
windows (targets: the original block on the quantized prefix's inputs, captured by the shared block
walk), then the codes taken once (⌊W/s⌉ + ⌊z⌉ clamped) and E2E-QP on the scales for `--max-steps` /
`--time-budget`. Simplified: one learning rate per phase (the paper uses separate ones for weights and
quantization parameters), a few steps instead of epochs over 4096 RedPajama samples, Block-AP's norm
weights left frozen. Reported: `perplexity_before` (RTN start), `perplexity_block_ap` (after phase 1),
the runner's `perplexity` (after phase 2).
"""

from __future__ import annotations

import copy

import torch

from reference_impls.common.fake_quant import FakeQuantLinear, swap_linears
from reference_impls.common.layerwise import block_linears
from reference_impls.common.qat import (
    GridQuantizer,
    QuantLinear,
    check_recovery,
    dequantize,
    minmax_grid,
    quantize_codes,
    recover,
    recovery_metrics,
    recovery_options,
)
from reference_impls.common.registry import Option, register
from reference_impls.common.training import TrainConfig, causal_lm_loss, train


def block_ap(bc, *, bits: int, group_size: int, steps: int, lr: float, seed: int) -> float:
    """Phase 1 on one block (a `BlockContext`): train W, s, z through the STE to match the block's
    full-precision output; the block ends with `QuantLinear`s. Returns the last reconstruction loss."""
    targets = bc.run()  # the original block on the quantized prefix's inputs, (batch, seq, hidden) each
    bc.block.requires_grad_(False)

    def make(_name, w, old):
        scale, zero = minmax_grid(w, bits=bits, group_size=group_size)
        layer = FakeQuantLinear(w, getattr(old, "bias", None),
                                weight_quant=GridQuantizer(scale, zero, bits=bits, train_grid=True))
        layer.weight.requires_grad_(True)
        return layer

    new = swap_linears(bc.block, bc.linears, make)
    params = [p for m in new.values() for p in m.parameters() if p.requires_grad]  # W, s, z

    def loss_fn(i: int) -> torch.Tensor:
        return bc.output_mse(i, targets)

    with torch.enable_grad():  # the shared block walk runs under no_grad
        result = train(params, loss_fn, lambda step: step % len(bc.inputs),
                       TrainConfig(max_steps=steps, lr=lr, warmup_steps=max(1, steps // 10), seed=seed,
                                   progress=False))

    def freeze(_name, w, layer):  # the codes, once: ⌊W/s⌉ + ⌊z⌉ on the learnt grid
        grid = layer.weight_quant
        zero = grid.zero.detach().round().clamp(0, 2**bits - 1)
        return QuantLinear(grid.codes(w), grid.scale.detach(), zero, layer.bias, bits=bits)

    swap_linears(bc.block, bc.linears, freeze)
    return result.losses[-1]


OPTIONS = {**recovery_options(lr=5e-4), "block_steps": Option(40, "Block-AP steps per block"),
           "block_lr": Option(1e-4, "Block-AP learning rate (weights, scales and zeros)")}


@register(
    "efficientqat", family="qat", papers=["efficientqat"], fidelity="simplified",
    summary="Block-AP (block-wise STE training of weights and grid) then E2E-QP (step sizes end to end)",
    options=OPTIONS, bench=[{"bits": 3}, {"bits": 2}], bench_models=("causal",),
)
def run_efficientqat(ctx, *, bits, group_size, max_steps, time_budget, lr, block_steps, block_lr) -> dict:
    check_recovery(bits=bits, max_steps=max_steps, time_budget=time_budget, lr=lr)
    if block_steps < 1 or not block_lr > 0:
        raise ValueError(f"--block-steps must be >= 1 and --block-lr > 0, got {block_steps}, {block_lr}")
    rtn = copy.deepcopy(ctx.model)  # the PTQ start, measured on a copy
    for _name, m in block_linears(rtn, ctx.adapter):
        w = m.weight.detach()
        scale, zero = minmax_grid(w, bits=bits, group_size=group_size)
        m.weight.data.copy_(dequantize(quantize_codes(w, scale, zero, bits=bits), scale, zero))
    before = ctx.heldout_perplexity(rtn)
    del rtn
    block_losses = []
    ctx.walk(lambda bc: block_losses.append(block_ap(bc, bits=bits, group_size=group_size, steps=block_steps,
                                                     lr=block_lr, seed=ctx.seed)), stats=())
    after_block_ap = ctx.heldout_perplexity()
    model = ctx.model
    model.requires_grad_(False)
    linears = dict(block_linears(model, ctx.adapter))  # QuantLinears after Block-AP
    scales = [m.scale for m in linears.values()]
    for s in scales:
        s.requires_grad_(True)  # E2E-QP: only the step sizes
    model.train()
    result = recover(ctx, scales, causal_lm_loss(model), max_steps=max_steps, time_budget=time_budget, lr=lr)
    model.eval()
    for name, m in linears.items():
        m.scale.requires_grad_(False)
        ctx.ledger.add_quantized(name, m.out_features, m.in_features, bits=bits, group_size=group_size)
    return recovery_metrics(perplexity_before=before, result=result, bits=bits,
                            trainable_params=sum(s.numel() for s in scales),
                            extra={"perplexity_block_ap": after_block_ap, "block_steps": block_steps,
                                   "block_ap_loss_last": block_losses})
