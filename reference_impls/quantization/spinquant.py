"""SpinQuant: "SpinQuant: LLM Quantization with Learned Rotations" (Liu, Zhao, Fedorov, Soran,
Choudhary, Krishnamoorthi, Chandra, Tian, Blankevoort; arXiv 2405.16406, ICLR 2025); record `spinquant`.

QuaRot's random rotations leave a wide spread of quantized accuracy from one random draw to the next;
SpinQuant *learns* them. Rotations that computational invariance fuses into the weights:
R₁ (hidden × hidden) on the residual stream (E ← E R₁, readers W ← W R₁, writers W ← R₁ᵀ W) and, per
layer, R₂ (head_dim × head_dim) on each head's values and the matching o_proj inputs
(W_v,h ← R₂ᵀ W_v,h, W_o ← W_o diag(R₂, …, R₂)). Online Hadamards stay fixed: R₃ on queries and keys
after RoPE (the 4-bit keys are quantized in that basis), R₄ = H̃ on the down_proj input. R₁ and R₂
minimise the cross-entropy of the *quantized* network on calibration text (weights, activations and
KV cache fake-quantized, straight-through gradients, §3.2) by Cayley SGD on the Stiefel manifold
(Li, Li, Todorovic 2020): with G = ∂L/∂R and X = Rᵀ, Ŵ = −Gᵀ Xᵀ + ½ X Xᵀ Gᵀ Xᵀ, Y = Ŵ − Ŵᵀ (skew),
X ← (I − α/2 Y)⁻¹ (I + α/2 Y) X, α = min(lr, 1 / ‖Y‖₁) — orthogonal at every step. Then the learned
rotations are fused and the weights quantized by GPTQ (or RTN) as in QuaRot.

Implemented (fidelity: simplified), with the official code's conventions (facebookresearch/SpinQuant):
R₁ initialised to a random Hadamard (the same draw as `quarot` for the same seed), learning rate 1.5
with cosine decay to 0, no momentum, the SGDG step size rule α = min(lr, 1/‖Y‖₁); activations and KV
quantized during the optimisation as at evaluation (STE: identity gradient, scales not
differentiated); weights RTN-quantized per output channel, symmetric, with STE — except when GPTQ
follows and activations or KV are quantized: then, as the official README prescribes (W16A4KV4
rotations for W4A4KV4 GPTQ), the weights stay in float during the optimisation; the learned rotations
are fused in float64. Quantizers are QuaRot's here (`common/rotation.py`): activations symmetric per
token, clip 0.9; keys and values asymmetric per head and token, clip 0.95.
Simplified, and how it differs from the official code:
- the optimisation is short: `--max-steps` (default 100, the paper's count) of `--batch-size` 8
  windows cycled over `--calib-samples` calibration windows of the project's model (256 tokens), not
  800 WikiText-2 samples of 2048 tokens; `--time-budget` stops it earlier;
- the Cayley step is solved exactly (a linear solve in float64) where SGDG runs 5 fixed-point
  iterations of it and re-orthonormalises by QR on 1 step in 101 at random;
- R₂ starts at the plain Hadamard H̃_hd (QuaRot's per-head factor) where the official code draws a
  random-sign Hadamard per layer, so that 0 steps is QuaRot: values are quantized in the R₂ basis,
  as `quarot` quantizes them in the H̃_hd basis, and with float weights the two models compute the
  same (tested); with quantized weights they differ only in v_proj, whose rows carry R₂ here (fused
  offline, as the QuaRot paper does) and not in `quarot.py` (which applies H̃_hd online to values);
- the o_proj input keeps QuaRot's online Hadamard across heads (H_heads ⊗ I, commuting with
  diag(R₂)) and per-token activation scales; the official code drops it and quantizes that input in
  per-head groups instead;
- training quantizes weights by plain min-max RTN (no MSE clip search, `--w_clip` in the official
  script) and activations symmetrically (the official script trains with asymmetric activations).
Not implemented: the int4 kernels (everything is simulated in floating point), SpinQuant_no-had (no
online Hadamards), and the rotation's variance over seeds (the paper's motivation) is not measured.
"""

from __future__ import annotations

import math
import time
from functools import partial

import torch
from torch import nn
from torch.func import functional_call
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.modeling_utils import AttentionInterface

from reference_impls.common.fake_quant import FakeQuantLinear, swap_model_linears
from reference_impls.common.folding import inject_activation_outliers
from reference_impls.common.hadamard import RandomHadamard, hadamard_matrix, hadamard_transform
from reference_impls.common.registry import Option, register
from reference_impls.common.rotation import (
    fold_norms,
    online_hessian,
    quantize_asym_per_token,
    quantize_kv,
    quantize_sym_per_token,
)
from reference_impls.common.storage import quantized_bits
from reference_impls.common.training import TrainConfig, TrainResult, lr_at
from reference_impls.quantization.gptq import gptq_quantize
from reference_impls.quantization.rtn import rtn_quantize

SPIN_ATTENTION = "atlas_spinquant_kv"
READERS = ("self_attn.q_proj", "self_attn.k_proj", "mlp.gate_proj", "mlp.up_proj")


# ---------------------------------------------------------------- pure core
@torch.no_grad()
def cayley_sgd_step(R: torch.Tensor, G: torch.Tensor, *, lr: float) -> tuple[torch.Tensor, float]:
    """One Cayley SGD step (SGDG without momentum) on an orthogonal R (n, n), used as x ↦ x R, with
    G = ∂L/∂R. Returns (R', α); R' is orthogonal to float64 precision."""
    X = R.t().double()  # (n, p): the Stiefel point as SGDG stores it
    M = -G.t().double()  # the descent direction
    W_hat = M @ X.t() - 0.5 * X @ (X.t() @ M @ X.t())  # projected gradient
    Y = W_hat - W_hat.t()  # skew-symmetric
    alpha = min(lr, 1.0 / (Y.abs().sum(0).max().item() + 1e-8))  # SGDG: t = 1 / ‖Y‖₁
    eye = torch.eye(Y.shape[0], dtype=Y.dtype, device=Y.device)
    X_new = torch.linalg.solve(eye - 0.5 * alpha * Y, (eye + 0.5 * alpha * Y) @ X)  # Cayley transform
    return X_new.t().to(R.dtype), alpha


class _StraightThrough(torch.autograd.Function):
    """Forward: the quantizer's exact output; backward: the identity (STE, scales not differentiated)."""

    @staticmethod
    def forward(ctx, x, quantize):
        return quantize(x)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def ste(quantize):
    return lambda x: _StraightThrough.apply(x, quantize)


def across_heads(x: torch.Tensor, heads: int, *, transpose: bool = False) -> torch.Tensor:
    """x (H_heads ⊗ I_hd) / √heads along the last dimension (heads · hd): QuaRot's online o_proj part."""
    y = x.unflatten(-1, (heads, -1)).transpose(-1, -2)  # (..., hd, heads)
    return hadamard_transform(y, transpose=transpose).transpose(-1, -2).flatten(-2)


def online_transforms(heads: int) -> dict:
    """The fixed online rotations of a block's linear inputs: R₄ = H̃ (down_proj), across heads (o_proj)."""
    return {"self_attn.o_proj": partial(across_heads, heads=heads), "mlp.down_proj": hadamard_transform}


def per_head(x: torch.Tensor, R2: torch.Tensor) -> torch.Tensor:
    """x diag(R₂, …, R₂) along the last dimension (heads · hd)."""
    return (x.unflatten(-1, (-1, R2.shape[0])) @ R2).flatten(-2)


def rotated_weights(base: dict, R1: torch.Tensor, R2s: list[torch.Tensor]) -> dict:
    """The weights of the rotated model from the norm-folded ones (`base`, (out, in), o_proj and
    down_proj with their online transforms already applied on the input side)."""
    out = {"embed": base["embed"].to(R1) @ R1, "head": base["head"].to(R1) @ R1}  # E R₁, W_head R₁
    for i, R2 in enumerate(R2s):
        b = {name: w.to(R1) for name, w in base["layers"][i].items()}  # R₁'s dtype and device
        layer = {name: b[name] @ R1 for name in READERS}  # readers: W R₁
        layer["self_attn.v_proj"] = per_head((b["self_attn.v_proj"] @ R1).t(), R2).t()  # R₂ᵀ W_v,h R₁
        layer["self_attn.o_proj"] = per_head(R1.t() @ b["self_attn.o_proj"], R2)  # R₁ᵀ W_o A diag(R₂)
        layer["mlp.down_proj"] = R1.t() @ b["mlp.down_proj"]  # R₁ᵀ W_down H̃
        out[i] = layer
    return out


# ---------------------------------------------------------------- the rotated, quantized model
def _kv_attention(module, query, key, value, attention_mask, *args, **kwargs):
    kv = getattr(module, "spinquant_kv", None)  # (bits, clip)
    if kv is not None:
        bits, clip = kv
        key = ste(partial(quantize_kv, bits=bits, clip=clip))(key.float()).to(key.dtype)  # R₃ basis
        value = ste(partial(quantize_asym_per_token, bits=bits, clip=clip))(value.float()).to(value.dtype)
    return sdpa_attention_forward(module, query, key, value, attention_mask, *args, **kwargs)


AttentionInterface.register(SPIN_ATTENTION, _kv_attention)
AttentionMaskInterface.register(SPIN_ATTENTION, sdpa_mask)


class SpinModel:
    """A norm-folded Llama whose block linears are FakeQuantLinears with online transforms, and the
    rotations R₁, R₂ that `fuse` writes into its weights."""

    def __init__(self, model: nn.Module, adapter, *, seed: int = 0):
        fold_norms(model, adapter)
        self.model, self.adapter = model, adapter
        cfg = model.config
        self.heads, hd = cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads
        hd = getattr(cfg, "head_dim", None) or hd
        online = online_transforms(self.heads)

        def make(name, w, old):
            fn = online.get(name)
            new = FakeQuantLinear((w if fn is None else fn(w.double())).to(old.weight.dtype), old.bias)
            new.online = fn
            return new

        swap_model_linears(model, adapter, make)
        blocks = adapter.blocks(model)
        self.base = {"embed": model.get_input_embeddings().weight.detach().double().clone(),
                     "head": model.get_output_embeddings().weight.detach().double().clone(),
                     "layers": [{n: lin.weight.detach().double().clone()
                                 for n, lin in adapter.linears(b).items()} for b in blocks]}
        self.R1 = RandomHadamard.draw(cfg.hidden_size, seed=seed).matrix()  # as QuaRot's Q
        self.R2s = [hadamard_matrix(hd) / math.sqrt(hd) for _ in blocks]  # QuaRot's per-head H̃
        model.set_attn_implementation(SPIN_ATTENTION)

    def params(self, R1, R2s, *, w_quant=None) -> dict[str, torch.Tensor]:
        """{parameter name: tensor} of the rotated model (for `functional_call` or `fuse`)."""
        rot = rotated_weights(self.base, R1, R2s)
        emb, head = self.model.get_input_embeddings(), self.model.get_output_embeddings()
        names = {id(p): n for n, p in self.model.named_parameters()}
        out = {names[id(emb.weight)]: rot["embed"], names[id(head.weight)]: rot["head"]}
        for i, block in enumerate(self.adapter.blocks(self.model)):
            for name, lin in self.adapter.linears(block).items():
                w = rot[i][name]
                out[names[id(lin.weight)]] = w if w_quant is None else w_quant(w)
        return out

    @torch.no_grad()
    def fuse(self) -> None:
        params = dict(self.model.named_parameters())
        for name, w in self.params(self.R1, self.R2s).items():
            params[name].copy_(w.to(params[name].dtype))

    def set_quantizers(self, *, a_bits: int, a_clip: float, kv_bits: int, kv_clip: float) -> None:
        """Every linear input: online transform, then A-bit per-token (16: none); KV at kv_bits."""
        for block in self.adapter.blocks(self.model):
            for lin in self.adapter.linears(block).values():
                lin.act_quant = partial(_act_quant, online=lin.online, bits=a_bits, clip=a_clip)
            block.self_attn.spinquant_kv = None if kv_bits == 16 else (kv_bits, kv_clip)


def _act_quant(x, *, online, bits, clip):
    x = x if online is None else online(x)
    return x if bits == 16 else ste(partial(quantize_sym_per_token, bits=bits, clip=clip))(x)


# ---------------------------------------------------------------- the optimisation (§3.2)
def _windows(calibration: list[dict], batch_size: int) -> list[torch.Tensor]:
    rows = torch.cat([b["input_ids"] for b in calibration])  # (n_windows, seq)
    return [rows[i : i + batch_size] for i in range(0, rows.shape[0], batch_size)]


def quantized_loss(spin: SpinModel, R1, R2s, ids: torch.Tensor, *, bits: int) -> torch.Tensor:
    """Cross-entropy of the rotated network with STE-RTN weights at `bits` (16: float weights) and the
    activation and KV quantizers set on the model."""
    w_quant = None if bits == 16 else ste(partial(rtn_quantize, bits=bits, sym=True))
    params = spin.params(R1, R2s, w_quant=w_quant)
    return functional_call(spin.model, params, args=(), kwargs={"input_ids": ids, "labels": ids}).loss


def optimize_rotations(spin: SpinModel, batches: list[torch.Tensor], *, bits: int, max_steps: int,
                       time_budget: float | None, lr: float, device) -> TrainResult:
    """Cayley SGD on R₁ and every R₂, cosine learning rate from `lr` to 0 (the official script)."""
    cfg = TrainConfig(max_steps=max_steps, lr=lr, warmup_steps=0, min_lr_ratio=0.0)
    result, started = TrainResult(), time.perf_counter()
    for step in range(max_steps):
        R1 = spin.R1.float().to(device).requires_grad_()
        R2s = [R.float().to(device).requires_grad_() for R in spin.R2s]
        loss = quantized_loss(spin, R1, R2s, batches[step % len(batches)].to(device), bits=bits)
        loss.backward()
        rate = lr_at(step, cfg)
        spin.R1 = cayley_sgd_step(spin.R1, R1.grad.cpu().double(), lr=rate)[0]
        spin.R2s = [cayley_sgd_step(R, R_f.grad.cpu().double(), lr=rate)[0]
                    for R, R_f in zip(spin.R2s, R2s, strict=True)]
        result.losses.append(loss.item())
        result.steps = step + 1
        if time_budget and time.perf_counter() - started > time_budget:
            result.stopped_by = "time_budget"
            break
    result.time_s = time.perf_counter() - started
    return result


@torch.no_grad()
def mean_quantized_loss(spin: SpinModel, batches, *, bits: int, device, max_windows: int = 32) -> float:
    """The objective on the first `max_windows` calibration windows (a fixed set, before and after)."""
    R1, R2s = spin.R1.float().to(device), [R.float().to(device) for R in spin.R2s]
    ids = torch.cat(batches)[:max_windows]
    losses = [quantized_loss(spin, R1, R2s, ids[i : i + 8].to(device), bits=bits).item() * len(ids[i : i + 8])
              for i in range(0, len(ids), 8)]
    return sum(losses) / len(ids)


# ---------------------------------------------------------------- model-level entry
@register(
    "spinquant", family="quantization", papers=["spinquant"], fidelity="simplified",
    summary="Rotations R1 (residual) and R2 (per head) learned by Cayley SGD on the quantized loss, "
            "fixed online Hadamards, then W4A4 with 4-bit KV",
    options={
        "bits": Option(4, "weight bits (2-8)"),
        "a_bits": Option(4, "activation bits of every linear's input (16 = not quantized)"),
        "kv_bits": Option(4, "key/value cache bits (16 = not quantized)"),
        "weight_quant": Option("gptq", "weight quantizer after the rotations", choices=("gptq", "rtn")),
        "max_steps": Option(100, "Cayley SGD steps (0 = QuaRot's random Hadamard)"),
        "time_budget": Option(0.0, "seconds of optimisation at most (0 = no limit)"),
        "lr": Option(1.5, "Cayley SGD learning rate (cosine decay to 0)"),
        "batch_size": Option(8, "calibration windows per step"),
        "a_clip": Option(0.9, "activation clip ratio"),
        "kv_clip": Option(0.95, "key/value clip ratio"),
        "inject_outliers": Option(0.0, "stress test: scale 4 hidden channels by this factor (0 = off)"),
    },
    bench=[  # 32 steps x 4 windows: one pass over the 128 calibration windows (CPU-sized)
        {**short, **row} for short in [{"max_steps": 32, "batch_size": 4}] for row in (
            {}, {"max_steps": 0}, {"weight_quant": "rtn"}, {"inject_outliers": 30.0},
            {"a_bits": 16, "kv_bits": 16, "bits": 3}, {"a_bits": 16, "kv_bits": 16, "bits": 2})
    ],
    bench_models=("causal",),
)
def run_spinquant(ctx, *, bits, a_bits, kv_bits, weight_quant, max_steps, time_budget, lr, batch_size,
                  a_clip, kv_clip, inject_outliers) -> dict:
    _check(bits, a_bits, kv_bits, max_steps, time_budget, lr, batch_size)
    if ctx.adapter.family != "llama":
        raise ValueError(f"spinquant needs a Llama-layout decoder, got {ctx.adapter.family!r}")
    injected = []
    if inject_outliers:
        injected = inject_activation_outliers(ctx.model, ctx.adapter, ctx.calibration[0],
                                              factor=inject_outliers, seed=ctx.seed)
    spin = SpinModel(ctx.model, ctx.adapter, seed=ctx.seed)
    batches = _windows(ctx.calibration, batch_size)
    spin.set_quantizers(a_bits=a_bits, a_clip=a_clip, kv_bits=kv_bits, kv_clip=kv_clip)
    # the official recipe: before GPTQ of a network whose activations are quantized, the rotations
    # are learned with float weights (W16A4KV4); otherwise with the RTN weights they will have
    train_bits = 16 if weight_quant == "gptq" and (a_bits < 16 or kv_bits < 16) else bits
    loss_init = mean_quantized_loss(spin, batches, bits=train_bits, device=ctx.device)
    result = optimize_rotations(spin, batches, bits=train_bits, max_steps=max_steps,
                                time_budget=time_budget or None, lr=lr, device=ctx.device)
    loss_final = loss_init if not result.steps else mean_quantized_loss(spin, batches, bits=train_bits,
                                                                        device=ctx.device)
    spin.fuse()
    spin.set_quantizers(a_bits=16, a_clip=a_clip, kv_bits=16, kv_clip=kv_clip)  # GPTQ sees float inputs
    quantize_weights(ctx, spin, bits=bits, weight_quant=weight_quant)
    spin.set_quantizers(a_bits=a_bits, a_clip=a_clip, kv_bits=kv_bits, kv_clip=kv_clip)
    ortho = max((R.t() @ R - torch.eye(R.shape[0], dtype=R.dtype)).abs().max().item()
                for R in [spin.R1, *spin.R2s])
    return {"outlier_channels_injected": len(injected), "w_bits": bits, "a_bits": a_bits, "kv_bits": kv_bits,
            "calib_loss_init": loss_init, "calib_loss_final": loss_final, "rotation_w_bits": train_bits,
            "rotation_orthogonality_error": ortho,
            "calib_windows": sum(b.shape[0] for b in batches), **result.summary("rotation")}


def quantize_weights(ctx, spin: SpinModel, *, bits: int, weight_quant: str) -> None:
    """GPTQ (Hessians of the online-transformed inputs) or RTN, symmetric per output channel."""
    transforms = online_transforms(spin.heads)

    def process(block):
        for name in block.linears:
            w = block.weight(name)
            if weight_quant == "rtn":
                new = rtn_quantize(w, bits=bits, sym=True)
            else:
                H = block.stats[name].hessian
                new = gptq_quantize(w, online_hessian(H, transforms[name]) if name in transforms else H,
                                    bits=bits, sym=True)
            block.set_weight(name, new)
            n_out, n_in = new.shape
            # the learned rotations live in the fused weights and the 16-bit embedding and head
            cost = quantized_bits(n_out, n_in, bits=bits, sym=True)
            ctx.ledger.add(f"{block.name}.{name}", n_out * n_in, cost)

    ctx.walk(process, stats=("hessian",) if weight_quant == "gptq" else ())


def _check(bits, a_bits, kv_bits, max_steps, time_budget, lr, batch_size) -> None:
    if not 2 <= bits <= 8:
        raise ValueError(f"--bits must be between 2 and 8, got {bits}")
    for opt, val in (("--a-bits", a_bits), ("--kv-bits", kv_bits)):
        if not (2 <= val <= 8 or val == 16):
            raise ValueError(f"{opt} must be between 2 and 8, or 16 (off), got {val}")
    if max_steps < 0:
        raise ValueError(f"--max-steps must be >= 0, got {max_steps}")
    if time_budget < 0:
        raise ValueError(f"--time-budget must be >= 0 seconds, got {time_budget}")
    if not lr > 0:
        raise ValueError(f"--lr must be positive, got {lr}")
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
