"""LLM.int8(): vector-wise int8 matmul with a 16-bit mixed-precision decomposition of outliers.

Paper: "LLM.int8(): 8-bit Matrix Multiplication for Transformers at Scale" (Dettmers, Lewis, Belkada,
Zettlemoyer, arXiv 2208.07339), section 3.

For a linear layer Y = X Wᵀ with X (tokens, in) and W (out, in):
- vector-wise quantization (eq. 3-4): each row of X (a token) and each row of W (an output
  channel: a column of the paper's W) gets its own absmax scale, c_x = 127 / max|X_i,:| and
  c_w = 127 / max|W_j,:|; the int8 product accumulates in int32 and is de-quantized by the outer
  product of the two scale vectors, Y ≈ (X_i8 W_i8ᵀ) / (c_x c_wᵀ);
- mixed-precision decomposition (eq. 5): the feature dimensions O = {h : max_t |X_t,h| ≥ α}
  (α = 6.0) are taken out and multiplied in 16 bits, Y = X_O W_Oᵀ (fp16) + int8 part of the rest.
  The outlier set is chosen per matmul from the current activations, as the official kernels do.

The weight is stored once in int8 with a per-row scale (8 bits per weight + a 32-bit scale per row).
By default the 16-bit part uses those de-quantized int8 weight columns, as bitsandbytes' inference
path does, so no 16-bit copy of W is kept; `fp16_weights=True` multiplies the outlier columns with
the original 16-bit weights, the paper's equation 5 literally (at the cost of keeping that copy).

Implemented: the decomposition above as a pure function and an nn.Module replacement for Linear
layers; the reported outlier fraction is the share of feature dimensions routed to 16 bits.
Not implemented: int8 CUDA kernels (the int32 accumulation is simulated exactly in float32 or float64), the
paper's analysis criteria for "systematic" outliers (≥ 25% of layers, ≥ 6% of tokens), int8 training.

Fidelity: exact.
"""

from __future__ import annotations

import torch

from reference_impls.common.fake_quant import FakeQuantLinear, swap_model_linears
from reference_impls.common.folding import inject_activation_outliers
from reference_impls.common.registry import Option, register

INT8_MAX = 127


def absmax_int8(t: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows (dim=-1) of t to int8 values (held in float) and their absmax: t ≈ q · absmax / 127."""
    absmax = t.abs().amax(dim=dim, keepdim=True)
    q = torch.round(t * (INT8_MAX / absmax.clamp(min=1e-12))).clamp(-INT8_MAX, INT8_MAX)
    return q, absmax


def exact_accumulator(in_features: int) -> torch.dtype:
    """A float dtype in which the int32 accumulation of int8 products is exact: float32 holds every
    integer below 2^24, enough when in_features · 127² < 2^24 (in_features ≤ 1040), else float64."""
    return torch.float32 if in_features * INT8_MAX**2 < 2**24 else torch.float64


def int8_vectorwise_matmul(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Vector-wise int8 X Wᵀ: x (n, in), weight (out, in) -> (n, out), float32."""
    acc_dtype = exact_accumulator(x.shape[-1])
    xq, sx = absmax_int8(x.to(acc_dtype), dim=-1)  # (n, in), (n, 1)
    wq, sw = absmax_int8(weight.to(acc_dtype), dim=-1)  # (out, in), (out, 1)
    acc = xq @ wq.T  # integer-valued and exact: the simulated int32 accumulator
    return (acc.double() * (sx.double() * sw.double().T) / INT8_MAX**2).float()


def outlier_dims(x: torch.Tensor, threshold: float = 6.0) -> torch.Tensor:
    """Feature dimensions where any token's activation magnitude reaches the threshold; (in,) bool."""
    return (x.abs() >= threshold).any(dim=0)


def llm_int8_matmul(
    x: torch.Tensor,
    weight: torch.Tensor,
    *,
    threshold: float = 6.0,
    fp16_weights: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Y = X Wᵀ with outlier dims in 16 bits and the rest in vector-wise int8.

    x: (n, in), weight: (out, in). Returns (y (n, out) float32, outlier mask (in,) bool).
    """
    outliers = outlier_dims(x, threshold)  # (in,)
    x_reg = torch.where(outliers, torch.zeros_like(x), x)  # outlier columns leave the int8 part
    acc_dtype = exact_accumulator(x.shape[-1])
    wq, sw = absmax_int8(weight.to(acc_dtype), dim=-1)  # the stored weight: per-row int8
    xq, sx = absmax_int8(x_reg.to(acc_dtype), dim=-1)
    y = ((xq @ wq.T).double() * (sx.double() * sw.double().T) / INT8_MAX**2).float()  # (n, out)
    if outliers.any():
        w_o = weight[:, outliers] if fp16_weights else (wq[:, outliers] * sw / INT8_MAX).float()  # (out, |O|)
        x_o = x[:, outliers].half().float()  # 16-bit activations of the outlier dims
        y = y + (x_o @ w_o.half().float().T).half().float()  # fp16 product, fp16 output as in the paper
    return y, outliers


class Int8Matmul:
    """`llm_int8_matmul` as a FakeQuantLinear matmul, counting the outlier dims of every call."""

    def __init__(self, in_features: int, *, threshold: float = 6.0, fp16_weights: bool = False):
        self.in_features, self.threshold, self.fp16_weights = in_features, threshold, fp16_weights
        self.calls, self.outlier_dims_total = 0, 0

    def __call__(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        y, outliers = llm_int8_matmul(x, weight, threshold=self.threshold, fp16_weights=self.fp16_weights)
        self.calls += 1
        self.outlier_dims_total += int(outliers.sum())
        return y

    @property
    def outlier_fraction(self) -> float:
        return self.outlier_dims_total / max(1, self.calls * self.in_features)


def int8_linear(
    weight: torch.Tensor, bias: torch.Tensor | None, *, threshold: float = 6.0, fp16_weights: bool = False
) -> FakeQuantLinear:
    """Drop-in Linear computing with LLM.int8(); its `matmul` records the outlier statistics."""
    matmul = Int8Matmul(weight.shape[1], threshold=threshold, fp16_weights=fp16_weights)
    return FakeQuantLinear(weight, bias, matmul=matmul)


# ---------------------------------------------------------------- model level
@register(
    "llm-int8",
    bench=[{}, {"inject_outliers": 30.0}, {"inject_outliers": 30.0, "threshold": 1e6}],
    family="quantization",
    papers=["llm-int8"],
    fidelity="exact",
    summary="Vector-wise int8 matmul; activation feature dims >= threshold computed in 16 bits",
    options={
        "threshold": Option(6.0, "outlier threshold on |activation| (inf = plain vector-wise int8)"),
        "fp16_weights": Option(False, "keep a 16-bit weight copy for outlier columns (paper eq. 5)"),
        "inject_outliers": Option(0.0, "stress test: scale 4 hidden channels by this factor (0 = off)"),
        "stat_batches": Option(2, "calibration batches on which the outlier fraction is measured"),
    },
)
def run_llm_int8(ctx, *, threshold, fp16_weights, inject_outliers, stat_batches) -> dict:
    injected = []
    if inject_outliers:
        injected = inject_activation_outliers(
            ctx.model, ctx.adapter, ctx.calibration[0], factor=inject_outliers, seed=ctx.seed
        )
    new = swap_model_linears(
        ctx.model,
        ctx.adapter,
        lambda _name, w, old: int8_linear(
            w.to(old.weight.dtype), getattr(old, "bias", None), threshold=threshold, fp16_weights=fp16_weights
        ),
    )
    for name, mod in new.items():
        n = mod.weight.numel()
        # int8 payload + a 16-bit scale per row; plus the 16-bit copy when the paper's form is asked for
        ctx.ledger.add(name, n, 8 * n + 16 * mod.out_features + (16 * n if fp16_weights else 0))
    modules = [m.matmul for m in new.values()]
    with torch.no_grad():  # the outlier statistics of the activations the model actually sees
        for batch in ctx.calibration[:stat_batches]:
            feed = {k: v.to(ctx.device) for k, v in batch.items()}
            ctx.model(**feed)
    calls = sum(m.calls for m in modules)
    return {
        "outlier_fraction": sum(m.outlier_fraction * m.calls for m in modules) / max(1, calls),
        "layers_with_outliers": sum(m.outlier_dims_total > 0 for m in modules),
        "threshold": threshold,
        "outlier_channels_injected": len(injected),
    }
