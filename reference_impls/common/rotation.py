"""Rotated-model machinery shared by the rotation methods (QuaRot, SpinQuant).

Computational invariance (SliceGPT): once every RMSNorm's scale γ is folded into the linears that read
it, RMSNorm(x Q) = RMSNorm(x) Q for any orthogonal Q, so the residual stream can be rotated, h' = h Q,
with Q's inverse folded into the weights: readers W ← W Q (q/k/v, gate/up, lm_head), writers
W ← Qᵀ W (o_proj, down_proj), the embedding E ← E Q.

- `fold_norms(model, adapter)`: untie the LM head, fold every RMSNorm γ into its readers (in place);
- `rotate_residual(model, adapter, rotate)`: the residual rotation with `rotate(x) = x Q` along the
  last dimension (a fast random Hadamard for QuaRot, a learned matrix for SpinQuant), in float64;
- the simulated quantizers of QuaRot's official code: `quantize_sym_per_token` (activations),
  `quantize_asym_per_token` and `quantize_kv` (keys/values per head and token in the Hadamard basis);
- `online_hessian`: the GPTQ Hessian of inputs that an online transform rotates.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from reference_impls.common.adapters import get_weight, set_weight
from reference_impls.common.folding import absorb_norm_scale
from reference_impls.common.hadamard import hadamard_transform

TensorFn = Callable[[torch.Tensor], torch.Tensor]


def quantize_sym_per_token(x: torch.Tensor, *, bits: int, clip: float = 1.0) -> torch.Tensor:
    """Symmetric fake quantization along the last dimension, scale = clip · max|x| / (2^(b−1) − 1)."""
    maxq = 2 ** (bits - 1) - 1
    scale = (clip * x.abs().amax(-1, keepdim=True)).clamp(min=1e-8) / maxq
    return torch.clamp(torch.round(x / scale), -maxq - 1, maxq) * scale


def quantize_asym_per_token(x: torch.Tensor, *, bits: int, clip: float = 1.0) -> torch.Tensor:
    """Asymmetric min-max fake quantization along the last dimension, range shrunk by `clip`."""
    maxq = 2**bits - 1
    xmin, xmax = clip * x.amin(-1, keepdim=True), clip * x.amax(-1, keepdim=True)
    scale = (xmax - xmin).clamp(min=1e-8) / maxq
    zero = torch.round(-xmin / scale)
    return (torch.clamp(torch.round(x / scale) + zero, 0, maxq) - zero) * scale


def quantize_kv(x: torch.Tensor, *, bits: int, clip: float) -> torch.Tensor:
    """Keys or values (batch, kv_heads, seq, head_dim) quantized per head and token in the per-head
    Hadamard basis, returned in the original basis: (q H̃)(Q(k H̃))ᵀ = q (Q(k H̃) H̃ᵀ)ᵀ."""
    return hadamard_transform(quantize_asym_per_token(hadamard_transform(x), bits=bits, clip=clip),
                              transpose=True)


def online_hessian(H: torch.Tensor, transform: TensorFn = hadamard_transform) -> torch.Tensor:
    """The Hessian of inputs x A given that of x (H symmetric), A the linear map `transform` applies
    along the last dimension (default H̃): Aᵀ H A."""
    return transform(transform(H).t())  # rows: (H A)ᵀ A = Aᵀ H A


def untie_lm_head(model: nn.Module) -> None:
    head = model.get_output_embeddings()
    if head.weight is model.get_input_embeddings().weight:
        head.weight = nn.Parameter(head.weight.detach().clone())
    model.config.tie_word_embeddings = False


@torch.no_grad()
def fold_norms(model: nn.Module, adapter) -> None:
    """Untie the head and fold every RMSNorm γ into the linears reading it: the same function, with
    norms that commute with rotations of the residual stream."""
    if adapter.family != "llama":
        raise ValueError(f"rotations need a Llama-layout decoder (pre-RMSNorm); got {adapter.family!r}")
    untie_lm_head(model)
    for b in adapter.blocks(model):
        absorb_norm_scale(b.input_layernorm, [b.self_attn.q_proj, b.self_attn.k_proj, b.self_attn.v_proj])
        absorb_norm_scale(b.post_attention_layernorm, [b.mlp.gate_proj, b.mlp.up_proj])
    absorb_norm_scale(model.model.norm, [model.get_output_embeddings()])


@torch.no_grad()
def rotate_residual(model: nn.Module, adapter, rotate: TensorFn) -> None:
    """h' = h Q on a norm-folded model, `rotate(x) = x Q` along the last dimension (given float64)."""
    emb = model.get_input_embeddings()
    emb.weight.copy_(rotate(emb.weight.double()).to(emb.weight.dtype))  # E ← E Q
    for b in adapter.blocks(model):
        attn, mlp = b.self_attn, b.mlp
        for lin in (attn.q_proj, attn.k_proj, attn.v_proj, mlp.gate_proj, mlp.up_proj):
            set_weight(lin, rotate(get_weight(lin).double()))  # readers: W ← W Q
        for lin in (attn.o_proj, mlp.down_proj):
            set_weight(lin, rotate(get_weight(lin).double().t()).t())  # writers: W ← Qᵀ W
            if lin.bias is not None:
                lin.bias.copy_(rotate(lin.bias.double()).to(lin.bias.dtype))
    head = model.get_output_embeddings()
    set_weight(head, rotate(get_weight(head).double()))
