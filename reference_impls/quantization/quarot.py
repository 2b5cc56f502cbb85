"""QuaRot: "QuaRot: Outlier-Free 4-Bit Inference in Rotated LLMs" (Ashkboos et al.; arXiv 2404.00456,
NeurIPS 2024); catalog record `quarot`.

Computational invariance (SliceGPT): once every RMSNorm's scale γ is folded into the linears that read
it, RMSNorm(x Q) = RMSNorm(x) Q for any orthogonal Q, so the residual stream can be rotated, h' = h Q,
with Q's inverse folded into the weights: readers W ← W Q (q/k/v, gate/up, lm_head), writers
W ← Qᵀ W (o_proj, down_proj), the embedding E ← E Q. With Q a random Hadamard matrix
(diag(s) H / √n), outlier channels are spread over all channels and every linear's input quantizes
well at 4 bits. Inputs that are not on the residual stream get an online Hadamard transform H̃: the
down_proj input (x H̃)(W H̃)ᵀ = x Wᵀ, the attention output before o_proj, and keys (with the queries)
and values per head before the 4-bit KV cache.

Implemented (fidelity: simplified): the norm fold, the random-Hadamard residual rotation, online
Hadamards on the o_proj and down_proj inputs (the paper splits o_proj's into an offline per-head part
fused into v_proj and an online across-heads part; for Sylvester sizes their product is the same
H_hidden, applied here in one step), weights per-channel symmetric by GPTQ (on the rotated model's
Hessians, transformed for the online Hadamards) or RTN, activations of every linear symmetric per token
with clip ratio `a_clip` (0.9, the paper's), keys and values asymmetric per head and token in the
per-head Hadamard basis with clip ratio `kv_clip` (0.95). All of it simulated in floating point
(`common/fake_quant.py`, one registered attention function for the KV cache).
Not implemented: the CUDA int4 kernels and fused Hadamard kernels (so no speed-up is measured);
lm_head, embeddings and the attention softmax stay 16-bit, as in the paper. A tied embedding is untied
(γ of the final norm is folded into lm_head only), which adds a vocab × hidden matrix to `params`.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.modeling_utils import AttentionInterface

from reference_impls.common.adapters import get_weight
from reference_impls.common.fake_quant import FakeQuantLinear, swap_model_linears
from reference_impls.common.folding import inject_activation_outliers
from reference_impls.common.hadamard import RandomHadamard, hadamard_transform
from reference_impls.common.registry import Option, register
from reference_impls.common.rotation import (
    fold_norms,
    online_hessian,
    quantize_kv,
    quantize_sym_per_token,
    rotate_residual,
)
from reference_impls.common.storage import quantized_bits
from reference_impls.quantization.gptq import gptq_quantize
from reference_impls.quantization.rtn import rtn_quantize

ONLINE = ("self_attn.o_proj", "mlp.down_proj")  # inputs off the residual stream: online Hadamard
KV_ATTENTION = "atlas_quarot_kv"


# ---------------------------------------------------------------- KV-cache hook
def _kv_quant_attention(module, query, key, value, attention_mask, *args, **kwargs):
    # *args: wrappers such as kvpress's attention patch pass `dropout` positionally
    kv = getattr(module, "quarot_kv", None)  # (bits, clip), set by run_quarot
    if kv is not None:
        key = quantize_kv(key.float(), bits=kv[0], clip=kv[1]).to(key.dtype)
        value = quantize_kv(value.float(), bits=kv[0], clip=kv[1]).to(value.dtype)
    return sdpa_attention_forward(module, query, key, value, attention_mask, *args, **kwargs)


AttentionInterface.register(KV_ATTENTION, _kv_quant_attention)
AttentionMaskInterface.register(KV_ATTENTION, sdpa_mask)


# ---------------------------------------------------------------- model transforms
@torch.no_grad()
def rotate_model(model: nn.Module, adapter, *, seed: int = 0) -> RandomHadamard:
    """Fold the norms and rotate the residual stream by a random Hadamard Q (in place); the model
    computes the same function. Returns Q."""
    if adapter.family != "llama":
        raise ValueError(f"quarot rotates Llama-layout decoders (pre-RMSNorm); got {adapter.family!r}")
    fold_norms(model, adapter)
    Q = RandomHadamard.draw(model.get_input_embeddings().weight.shape[1], seed=seed)
    rotate_residual(model, adapter, Q.apply)
    return Q


def add_online_hadamards(model: nn.Module, adapter) -> dict[str, FakeQuantLinear]:
    """Every block linear becomes a FakeQuantLinear; o_proj and down_proj compute (x H̃)(W H̃)ᵀ."""
    def make(name, w, old):
        online = name in ONLINE
        new = FakeQuantLinear((hadamard_transform(w.double()) if online else w).to(old.weight.dtype),
                              getattr(old, "bias", None), act_quant=hadamard_transform if online else None)
        new.online = online
        return new

    return swap_model_linears(model, adapter, make)


# ---------------------------------------------------------------- model-level entry
@register(
    "quarot", family="quantization", papers=["quarot"], fidelity="simplified",
    summary="Random-Hadamard rotation of the residual stream + online Hadamards, then W4A4 with 4-bit KV",
    options={
        "bits": Option(4, "weight bits (2-8)"),
        "a_bits": Option(4, "activation bits of every linear's input (16 = not quantized)"),
        "kv_bits": Option(4, "key/value cache bits (16 = not quantized)"),
        "weight_quant": Option("gptq", "weight quantizer on the rotated weights", choices=("gptq", "rtn")),
        "rotate": Option(True, "rotate (false = the same quantizers on the unrotated model)"),
        "a_clip": Option(0.9, "activation clip ratio"),
        "kv_clip": Option(0.95, "key/value clip ratio"),
        "inject_outliers": Option(0.0, "stress test: scale 4 hidden channels by this factor (0 = off)"),
    },
    bench=[
        {}, {"rotate": False}, {"weight_quant": "rtn"}, {"weight_quant": "rtn", "rotate": False},
        {"inject_outliers": 30.0}, {"inject_outliers": 30.0, "rotate": False},
        {"a_bits": 16, "kv_bits": 16, "bits": 3}, {"a_bits": 16, "kv_bits": 16, "bits": 3, "rotate": False},
        {"a_bits": 16, "kv_bits": 16, "bits": 2}, {"a_bits": 16, "kv_bits": 16, "bits": 2, "rotate": False},
    ],
    bench_models=("causal",),
)
def run_quarot(ctx, *, bits, a_bits, kv_bits, weight_quant, rotate, a_clip, kv_clip, inject_outliers) -> dict:
    if not 2 <= bits <= 8:
        raise ValueError(f"--bits must be between 2 and 8, got {bits}")
    for opt, val in (("--a-bits", a_bits), ("--kv-bits", kv_bits)):
        if not (2 <= val <= 8 or val == 16):
            raise ValueError(f"{opt} must be between 2 and 8, or 16 (off), got {val}")
    if ctx.adapter.family != "llama":
        raise ValueError(f"quarot needs a Llama-layout decoder, got {ctx.adapter.family!r}")
    injected = []
    if inject_outliers:
        injected = inject_activation_outliers(ctx.model, ctx.adapter, ctx.calibration[0],
                                              factor=inject_outliers, seed=ctx.seed)
    if rotate:
        rotate_model(ctx.model, ctx.adapter, seed=ctx.seed)
        add_online_hadamards(ctx.model, ctx.adapter)

    def quantize_weight(w, hessian, online):
        if weight_quant == "rtn":
            return rtn_quantize(w, bits=bits, sym=True)
        return gptq_quantize(w, online_hessian(hessian) if online else hessian, bits=bits, sym=True)

    def process(block):
        for name, lin in block.linears.items():
            new = quantize_weight(block.weight(name), block.stats[name].hessian if block.stats else None,
                                  getattr(lin, "online", False))
            block.set_weight(name, new)
            n_out, n_in = new.shape
            cost = quantized_bits(n_out, n_in, bits=bits, sym=True)  # the rotations are seeded, not stored
            ctx.ledger.add(f"{block.name}.{name}", n_out * n_in, cost)

    ctx.walk(process, stats=("hessian",) if weight_quant == "gptq" else ())
    _quantize_activations(ctx, a_bits=a_bits, a_clip=a_clip, kv_bits=kv_bits, kv_clip=kv_clip)
    return {"outlier_channels_injected": len(injected), "w_bits": bits, "a_bits": a_bits, "kv_bits": kv_bits}


def _quantize_activations(ctx, *, a_bits, a_clip, kv_bits, kv_clip) -> None:
    """After the weights (as QuaRot: GPTQ sees full-precision activations): A-bit linear inputs, KV cache."""
    for block in ctx.adapter.blocks(ctx.model):
        for name, lin in ctx.adapter.linears(block).items():
            online = getattr(lin, "online", False)
            if a_bits == 16 and not online:
                continue
            if not isinstance(lin, FakeQuantLinear):
                lin = FakeQuantLinear(get_weight(lin), lin.bias)
                block.set_submodule(name, lin)

            def act(x, online=online):
                x = hadamard_transform(x) if online else x
                return x if a_bits == 16 else quantize_sym_per_token(x, bits=a_bits, clip=a_clip)

            lin.act_quant = act
        if kv_bits != 16:
            block.self_attn.quarot_kv = (kv_bits, kv_clip)
    if kv_bits != 16:
        ctx.model.set_attn_implementation(KV_ATTENTION)
