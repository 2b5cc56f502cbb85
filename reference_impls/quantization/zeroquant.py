"""ZeroQuant: fine-grained group-wise weights, token-wise activations, layer-by-layer distillation.

Paper: "ZeroQuant: Efficient and Affordable Post-Training Quantization for Large-Scale Transformers"
(Yao, Yazdani Aminabadi, Zhang, Wu, Li, He; arXiv 2206.01861), sections 4.1-4.2.

- Group-wise weight quantization (4.1): each weight matrix is quantized with one scale per group
  (symmetric, absmax), finer than per-tensor or per-row.
- Token-wise activation quantization (4.1): each token's activation vector gets its own dynamic
  range at run time (asymmetric min-max per token), because token ranges differ widely in GPT-style
  models.
- Schemes: W8A8 (every linear's weight and input in int8) and W4/8-A16 (attention weights in int8,
  MLP weights in int4, activations kept in 16 bits).
- LKD (4.2): layer-by-layer knowledge distillation without the original training data: block k of
  the quantized model is trained so that, on the same input, its output matches the full-precision
  block's output (MSE), one block at a time; the weights stay in the quantized form through a
  straight-through estimator.

Implemented: all of the above. The quantizers are pure functions; the model-level entry runs on the
shared sequential layer walk. LKD trains each block's linear (latent) weights with Adam for
`lkd_steps` steps on the calibration batches, and keeps the result only if the block's
calibration MSE went down. The paper's learning rate 5e-6 is for 1.3B+ models; the default here
suits small models.

Differences from the paper (simplified): groups run along the input dimension in blocks of
`group_size` (the project's convention) rather than the paper's partition of a matrix into row
groups; in LKD both the student and the teacher block read the output of the already-quantized
prefix (the paper feeds both the output of the original prefix); weights are symmetric and
activations asymmetric, as we read the paper (both are easy to change); the attention BMMs and
the fused CUDA kernels are not simulated.
"""

from __future__ import annotations

import torch
from torch import nn

from reference_impls.common.fake_quant import FakeQuantLinear, swap_linears
from reference_impls.common.registry import Option, register
from reference_impls.common.storage import group_width


# ---------------------------------------------------------------- pure core
def groupwise_quantize(weight: torch.Tensor, *, bits: int = 8, group_size: int = 64) -> torch.Tensor:
    """Symmetric absmax quantization with one scale per group of `group_size` inputs of a row."""
    out_features, in_features = weight.shape
    g = group_width(group_size, in_features)
    qmax = 2 ** (bits - 1) - 1
    pad = (-in_features) % g  # a short last group: zero padding leaves its absmax unchanged
    w = nn.functional.pad(weight.float(), (0, pad)).reshape(out_features, -1, g)  # (out, n_groups, g)
    scale = w.abs().amax(-1, keepdim=True).clamp(min=1e-8) / qmax
    q = (torch.round(w / scale).clamp(-qmax, qmax) * scale).reshape(out_features, -1)[:, :in_features]
    return q.to(weight.dtype)


def tokenwise_quantize(x: torch.Tensor, *, bits: int = 8) -> torch.Tensor:
    """Asymmetric min-max quantization with a dynamic range per token (last dim)."""
    maxq = 2**bits - 1
    xf = x.float()
    xmin = xf.amin(-1, keepdim=True).clamp(max=0)
    xmax = xf.amax(-1, keepdim=True).clamp(min=0)
    scale = ((xmax - xmin) / maxq).clamp(min=1e-8)
    zero = torch.round(-xmin / scale)
    return ((torch.clamp(torch.round(xf / scale) + zero, 0, maxq) - zero) * scale).to(x.dtype)


class _RoundSTE(torch.autograd.Function):
    """Quantize in the forward pass, pass the gradient straight through (for LKD)."""

    @staticmethod
    def forward(ctx, w, bits, group_size):
        return groupwise_quantize(w, bits=bits, group_size=group_size)

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None


def zeroquant_linear(
    weight: torch.Tensor, bias: torch.Tensor | None, *, w_bits: int, group_size: int, a_bits: int | None
) -> FakeQuantLinear:
    """Linear with group-wise quantized weights (a float32 latent weight quantized at each call
    through the straight-through estimator, for LKD) and (optionally) token-wise quantized inputs."""
    return FakeQuantLinear(
        weight.detach().float(),
        bias,
        weight_quant=lambda w: _RoundSTE.apply(w, w_bits, group_size),
        act_quant=None if a_bits is None else (lambda x: tokenwise_quantize(x, bits=a_bits)),
    )


def scheme_bits(scheme: str, linear_name: str) -> tuple[int, int | None]:
    """(weight bits, activation bits or None) of one linear under a ZeroQuant scheme."""
    if scheme == "w8a8":
        return 8, 8
    if scheme == "w4/8a16":
        attention = any(
            k in linear_name for k in ("attn", "attention", "q_proj", "k_proj", "v_proj", "o_proj")
        )
        return (8 if attention else 4), None
    raise ValueError(f"unknown scheme {scheme!r}; expected w8a8 or w4/8a16")


# ---------------------------------------------------------------- layer-by-layer distillation
def lkd_block(
    bctx, teacher_outputs: list[torch.Tensor], *, steps: int, lr: float, seed: int = 0
) -> tuple[float, float]:
    """Train the block's quantized linears so its outputs match the teacher's; (loss before, after)."""
    params = [m.weight for m in bctx.linears.values()]
    start = [p.detach().clone() for p in params]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr)
    gen = torch.Generator().manual_seed(seed)

    def loss_on(i):
        out = bctx.block(bctx.inputs[i], **bctx.kwargs[i])
        out = out[0] if isinstance(out, tuple) else out
        return nn.functional.mse_loss(out.float(), teacher_outputs[i].float())

    with torch.no_grad():
        before = sum(loss_on(i).item() for i in range(len(bctx.inputs))) / len(bctx.inputs)
    for _ in range(steps):
        i = int(torch.randint(len(bctx.inputs), (1,), generator=gen))
        with torch.enable_grad():
            opt.zero_grad()
            loss_on(i).backward()
            opt.step()
    for p in params:
        p.requires_grad_(False)
    with torch.no_grad():
        after = sum(loss_on(i).item() for i in range(len(bctx.inputs))) / len(bctx.inputs)
        if after > before:  # distillation can only be kept when it helps on the calibration data
            for p, w in zip(params, start, strict=True):
                p.copy_(w)
            after = before
    return before, after


# ---------------------------------------------------------------- model level
@register(
    "zeroquant",
    bench=[{}, {"scheme": "w4/8a16"}, {"scheme": "w4/8a16", "lkd_steps": 100}],
    family="quantization",
    papers=["zeroquant"],
    fidelity="simplified",
    summary="Group-wise int weights, token-wise int8 activations (W8A8 or W4/8-A16), optional LKD",
    options={
        "scheme": Option(
            "w8a8",
            "w8a8, or w4/8a16 (int8 attention, int4 MLP weights, 16-bit activations)",
            choices=("w8a8", "w4/8a16"),
        ),
        "group_size": Option(64, "weights per quantization group along the input (-1 = whole row)"),
        "lkd_steps": Option(0, "layer-by-layer distillation steps per block (0 = off)"),
        "lkd_lr": Option(3e-5, "Adam learning rate of LKD"),
    },
)
def run_zeroquant(ctx, *, scheme, group_size, lkd_steps, lkd_lr) -> dict:
    gains: list[tuple[float, float]] = []

    def make(name, w, old):
        w_bits, a_bits = scheme_bits(scheme, name)
        return zeroquant_linear(
            w, getattr(old, "bias", None), w_bits=w_bits, group_size=group_size, a_bits=a_bits
        )

    def process(bctx):
        teacher = bctx.run() if lkd_steps else None  # the full-precision block on the same inputs
        swap_linears(bctx.block, bctx.linears, make)
        if lkd_steps:
            gains.append(lkd_block(bctx, teacher, steps=lkd_steps, lr=lkd_lr, seed=ctx.seed + bctx.index))
        for name, lin in bctx.linears.items():
            lin.freeze()
            ctx.ledger.add_quantized(
                f"{bctx.name}.{name}",
                lin.out_features,
                lin.in_features,
                bits=scheme_bits(scheme, name)[0],
                group_size=group_size,
                sym=True,
            )

    ctx.walk(process, stats=())
    metrics = {}
    if gains:
        metrics["lkd_block_mse_before"] = sum(b for b, _ in gains) / len(gains)
        metrics["lkd_block_mse_after"] = sum(a for _, a in gains) / len(gains)
    return metrics
