"""OmniQuant: "OmniQuant: Omnidirectionally Calibrated Quantization for Large Language Models" (Shao,
Chen, Zhang, Xu, Zhao, Li, Zhang, Gao, Qiao, Luo; arXiv 2308.13137, ICLR 2024); catalog record
`omniquant`.

Block by block, OmniQuant learns a few quantization parameters by gradient descent on the block's
output error ‖F(W, X) − F(Q(W), X)‖² (eq. 1), with the weights themselves frozen. Learnable weight
clipping (LWC, eq. 2) shrinks each output channel's range: h = (σ(γ)·max W − σ(β)·min W) / (2^N − 1),
z = −⌊σ(β)·min W / h⌉, W_q = clamp(⌊W/h⌉ + z, 0, 2^N − 1), with γ, β per channel (and group) trained
through the straight-through estimator for ⌊·⌉.

Implemented (fidelity: simplified): LWC as in OpenGVLab/OmniQuant `quantizer.py` (sigmoid bounds,
initial γ = β = 4, asymmetric per-channel or group-wise grids, round with a straight-through
gradient), trained per block with AdamW (no weight decay; lr 5e-2 by default, five times the official
1e-2, because the budget here is 40 steps per block instead of ~2560) on the
block's calibration inputs from the quantized prefix (the walk of `common/layerwise.py`), the target
being the full-precision block's output on those same inputs, for `--max-steps` steps per block (or
`--time-budget` seconds per block) through the shared loop `common/training.train`.
Not implemented: learnable equivalent transformation (LET), which the official scripts enable for
weight-activation quantization (W4A4, W6A6) and not for the weight-only rows benchmarked here; the
paper's 20 epochs over 128 samples per block (a short step budget instead); activation quantization.
With σ(γ) = σ(β) = 1 the quantizer is exactly RTN's min-max grid (tested).
"""

from __future__ import annotations

import torch
from torch import nn

from reference_impls.common.fake_quant import swap_linears
from reference_impls.common.registry import Option, register
from reference_impls.common.storage import group_width
from reference_impls.common.training import TrainConfig, train


# ---------------------------------------------------------------- pure core
def round_ste(x: torch.Tensor) -> torch.Tensor:
    """⌊x⌉ forward, identity backward (the straight-through estimator)."""
    return x + (torch.round(x) - x).detach()


def lwc_quantize(W: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, *, bits: int,
                 group_size: int = -1) -> torch.Tensor:
    """LWC fake quantization (eq. 2) of W (out, in); gamma, beta (out · groups,) logits of the bounds."""
    n_out, n_in = W.shape
    gs = group_width(group_size, n_in, must_divide=True)
    Wg = W.reshape(-1, gs)  # (out · groups, g)
    maxq = 2**bits - 1
    xmax = torch.sigmoid(gamma)[:, None] * Wg.amax(1, keepdim=True)
    xmin = torch.sigmoid(beta)[:, None] * Wg.amin(1, keepdim=True)
    h = ((xmax - xmin) / maxq).clamp(min=1e-5)
    z = -round_ste(xmin / h)
    q = torch.clamp(round_ste(Wg / h) + z, 0, maxq)
    return ((q - z) * h).reshape(n_out, n_in)


class LWCLinear(nn.Module):
    """A frozen linear whose weight is LWC-fake-quantized at every call (γ, β trainable)."""

    def __init__(self, weight: torch.Tensor, bias, *, bits: int, group_size: int, init: float):
        super().__init__()
        self.register_buffer("w", weight.detach().float().clone())  # (out, in)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        groups = weight.shape[1] // group_width(group_size, weight.shape[1], must_divide=True)
        n = weight.shape[0] * groups
        self.gamma = nn.Parameter(torch.full((n,), init))
        self.beta = nn.Parameter(torch.full((n,), init))
        self.bits, self.group_size = bits, group_size

    def quantized_weight(self) -> torch.Tensor:
        return lwc_quantize(self.w, self.gamma, self.beta, bits=self.bits, group_size=self.group_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.quantized_weight().to(x.dtype), self.bias)


def calibrate_block(bctx, *, bits: int, group_size: int, cfg: TrainConfig, init: float = 4.0) -> dict:
    """Train LWC for every linear of one block on ‖block_fp(X) − block_q(X)‖²; write Q(W) back."""
    targets = [t.detach() for t in bctx.run()]  # full-precision block on the prefix's inputs
    originals = dict(bctx.linears)
    lwc = swap_linears(bctx.block, bctx.linears, lambda _n, w, old: LWCLinear(
        w, getattr(old, "bias", None), bits=bits, group_size=group_size, init=init))

    def loss_fn(i: int) -> torch.Tensor:
        return bctx.output_mse(i, targets)

    before = bctx.mean_output_mse(targets)
    with torch.enable_grad():
        result = train([p for m in lwc.values() for p in (m.gamma, m.beta)], loss_fn,
                       lambda step: step % len(targets), cfg)
    after = bctx.mean_output_mse(targets)
    for name, module in lwc.items():  # back to plain linears holding the de-quantized weight
        with torch.no_grad():
            originals[name].weight.copy_(module.quantized_weight().to(originals[name].weight.dtype))
        bctx.block.set_submodule(name, originals[name])
        bctx.linears[name] = originals[name]
    return {"loss_init": before, "loss_trained": after, "steps": result.steps}


# ---------------------------------------------------------------- model-level entry
@register(
    "omniquant", family="quantization", papers=["omniquant"], fidelity="simplified",
    summary="Learnable weight clipping trained block by block on the block's output error",
    options={
        "bits": Option(3, "bits per weight (2-8)"),
        "group_size": Option(-1, "input columns per group (-1 = whole row; must divide the row)"),
        "max_steps": Option(40, "optimisation steps per block"),
        "time_budget": Option(0.0, "seconds per block (0 = no limit)"),
        "lr": Option(5e-2, "learning rate of the clipping logits (official: 1e-2 over ~2560 steps)"),
    },
    bench=[{"bits": 2}, {"bits": 3}],
    bench_models=("causal",),
)
def run_omniquant(ctx, *, bits, group_size, max_steps, time_budget, lr) -> dict:
    if not 2 <= bits <= 8:
        raise ValueError(f"--bits must be between 2 and 8, got {bits}")
    cfg = TrainConfig(max_steps=max_steps, time_budget=time_budget or None, lr=lr, weight_decay=0.0,
                      warmup_steps=0, min_lr_ratio=1.0, grad_clip=None, seed=ctx.seed, progress=False)
    per_block = []

    def process(bctx) -> None:
        per_block.append(calibrate_block(bctx, bits=bits, group_size=group_size, cfg=cfg))
        for name in bctx.linears:
            ctx.ledger.add_quantized(f"{bctx.name}.{name}", *bctx.weight(name).shape, bits=bits,
                                     group_size=group_size, sym=False)

    ctx.walk(process, stats=())
    return {"block_loss_init": [float(f"{b['loss_init']:.6g}") for b in per_block],
            "block_loss_trained": [float(f"{b['loss_trained']:.6g}") for b in per_block],
            "steps_per_block": per_block[0]["steps"] if per_block else 0}
