"""SmoothQuant: migrating activation outliers into the weights for W8A8 quantization.

Paper: "SmoothQuant: Accurate and Efficient Post-Training Quantization for Large Language Models"
(Xiao, Lin, Seznec, Wu, Demouth, Han, arXiv 2211.10438), section 4.

Activations of large LLMs have a few channels with outliers 100x the rest, so per-tensor (or even
per-token) int8 activations lose the other channels; weights are easy to quantize. SmoothQuant
divides each input channel j of the activation by s_j and multiplies the matching weight column by
s_j, an exact equivalent transform Y = (X diag(s)⁻¹)(diag(s) Wᵀ), with (eq. 4)

    s_j = max|X_j|^α / max|W_j|^(1-α),   α = 0.5 by default (the migration strength),

where max|X_j| is taken over calibration tokens and max|W_j| over the output channels of all the
linears that read X. diag(s)⁻¹ is folded into the preceding normalisation's weight (and bias),
so the smoothed model has no extra operation.

Implemented: smoothing factors, the fold into a LayerNorm/RMSNorm that feeds q/k/v or the MLP's
first linears (the inputs the paper smooths), and simulated W8A8 for every linear: per-output-channel
symmetric int8 weights; activations int8 symmetric per token (dynamic), per tensor (dynamic) or per
tensor with a static scale calibrated after smoothing (the paper's O1-O3 levels differ in these).
Not implemented: int8 quantization of the attention BMM inputs, real int8 kernels (CUTLASS/FasterTransformer).

Fidelity: exact for the transform and the fake-quantization; simplified in that only the linear
layers (not the attention matmuls) compute in int8.
"""

from __future__ import annotations

import torch

from reference_impls.common.fake_quant import FakeQuantLinear, swap_linears
from reference_impls.common.folding import (
    fold_is_equivalent,
    fold_scales,
    inject_activation_outliers,
    is_norm,
)
from reference_impls.common.registry import Option, register

INT8_MAX = 127


# ---------------------------------------------------------------- pure core
def smoothing_factors(
    act_absmax: torch.Tensor, weights: list[torch.Tensor], *, alpha: float = 0.5
) -> torch.Tensor:
    """s (in,) from per-channel activation maxima (in,) and the weights (out_i, in) reading them."""
    w_absmax = torch.cat([w.abs() for w in weights], dim=0).amax(dim=0)  # (in,)
    s = act_absmax.float().clamp(min=1e-5).pow(alpha) / w_absmax.float().clamp(min=1e-5).pow(1 - alpha)
    return s.clamp(min=1e-5)


def quantize_weight_per_channel(weight: torch.Tensor, *, bits: int = 8) -> torch.Tensor:
    """Symmetric absmax fake-quantization with one scale per output row."""
    qmax = 2 ** (bits - 1) - 1
    scale = weight.abs().amax(dim=-1, keepdim=True).clamp(min=1e-8) / qmax  # (out, 1)
    return (torch.round(weight / scale).clamp(-qmax, qmax) * scale).to(weight.dtype)


def quantize_activation(
    x: torch.Tensor, *, granularity: str = "token", bits: int = 8, static_absmax: torch.Tensor | None = None
) -> torch.Tensor:
    """Symmetric absmax fake-quantization of activations (..., in).

    granularity "token": one scale per token (row); "tensor": one dynamic scale for the whole tensor;
    "static": the per-tensor scale from `static_absmax`, fixed at calibration time (values beyond it clip).
    """
    qmax = 2 ** (bits - 1) - 1
    if granularity == "token":
        absmax = x.abs().amax(dim=-1, keepdim=True)
    elif granularity == "tensor":
        absmax = x.abs().amax()
    elif granularity == "static":
        if static_absmax is None:
            raise ValueError("static activation quantization needs a calibrated static_absmax")
        absmax = static_absmax.to(x.device)
    else:
        raise ValueError(f"granularity must be 'token', 'tensor' or 'static', not {granularity!r}")
    scale = absmax.clamp(min=1e-8) / qmax
    return torch.round(x / scale).clamp(-qmax, qmax) * scale


def w8a8_linear(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    act_granularity: str = "token",
    bits: int = 8,
    static_absmax: torch.Tensor | None = None,
    quantize_weight: bool = True,
) -> FakeQuantLinear:
    """A Linear whose weight is int8 per-channel and whose input is int8-quantized at each call."""
    w = (
        quantize_weight_per_channel(weight.detach().float(), bits=bits)
        if quantize_weight
        else weight.detach()
    )

    def act_quant(x: torch.Tensor) -> torch.Tensor:
        q = quantize_activation(
            x.float(), granularity=act_granularity, bits=bits, static_absmax=static_absmax
        )
        return q.to(x.dtype)

    return FakeQuantLinear(w.to(weight.dtype), bias, act_quant=act_quant)


# ---------------------------------------------------------------- block level (shared layer walk)
def smooth_block(bctx, *, alpha: float = 0.5) -> int:
    """Fold smoothing factors into every norm -> linears group of one block; returns groups smoothed.

    `bctx` is a reference_impls.common.layerwise.BlockContext with `act_max` statistics.
    """
    done = 0
    for group in bctx.adapter.input_groups:
        if group.prev is None or not is_norm(bctx.block.get_submodule(group.prev)):
            continue  # the paper smooths the inputs of q/k/v and of the MLP's first linears only
        if not fold_is_equivalent(bctx, group):
            continue  # a post-LN norm that also feeds the residual (BERT) cannot absorb the scales
        act_max = bctx.stats[group.linears[0]].act_max  # the group's linears share this input
        s = smoothing_factors(act_max, [bctx.weight(n) for n in group.linears], alpha=alpha)
        fold_scales(bctx, group, s)
        done += 1
    return done


def quantize_block_w8a8(
    bctx, *, act_granularity: str = "token", bits: int = 8, quantize_weight: bool = True
) -> dict[str, FakeQuantLinear]:
    """Replace every linear of the block by a W8A8 FakeQuantLinear; static scales come from the
    block's inputs now."""
    static: dict[str, torch.Tensor] = {}
    if act_granularity == "static":
        captured = bctx.linear_inputs(bctx.linears)
        static = {n: torch.stack([x.abs().amax() for x in xs]).amax() for n, xs in captured.items()}
    return swap_linears(
        bctx.block,
        bctx.linears,
        lambda name, w, old: w8a8_linear(
            w, getattr(old, "bias", None), act_granularity=act_granularity, bits=bits,
            static_absmax=static.get(name), quantize_weight=quantize_weight,
        ),
    )  # fmt: skip


# ---------------------------------------------------------------- model level
@register(
    "smoothquant",
    bench=[
        {},
        {"act_quant": "tensor"},
        {"act_quant": "static"},
        {"act_quant": "tensor", "smooth": False, "inject_outliers": 30.0},
        {"act_quant": "tensor", "inject_outliers": 30.0},
    ],
    family="quantization",
    papers=["smoothquant"],
    fidelity="exact",
    summary="Migrate activation outliers into weights (s = max|X|^a / max|W|^(1-a)), then simulated W8A8",
    options={
        "alpha": Option(0.5, "migration strength"),
        "act_quant": Option(
            "token",
            "activation scales: per token, per tensor (dynamic), static per tensor",
            choices=("token", "tensor", "static"),
        ),
        "smooth": Option(True, "apply the smoothing (false = naive W8A8 baseline)"),
        "bits": Option(8, "bits of weights and activations"),
        "inject_outliers": Option(0.0, "stress test: scale 4 hidden channels by this factor (0 = off)"),
    },
)
def run_smoothquant(ctx, *, alpha, act_quant, smooth, bits, inject_outliers) -> dict:
    injected = []
    if inject_outliers:
        injected = inject_activation_outliers(
            ctx.model, ctx.adapter, ctx.calibration[0], factor=inject_outliers, seed=ctx.seed
        )
    n_smoothed = []

    def process(bctx):
        if smooth:
            n_smoothed.append(smooth_block(bctx, alpha=alpha))
        for name, m in quantize_block_w8a8(bctx, act_granularity=act_quant, bits=bits).items():
            ctx.ledger.add_quantized(
                f"{bctx.name}.{name}", m.out_features, m.in_features, bits=bits, sym=True
            )

    ctx.walk(process, stats=("act_max",))
    # Post-LN encoders (BERT) admit neither the injection nor the smoothing folds: both report 0.
    return {"smoothed_groups": sum(n_smoothed), "outlier_channels_injected": len(injected)}
