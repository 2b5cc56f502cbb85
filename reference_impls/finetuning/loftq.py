"""LoftQ: "LoftQ: LoRA-Fine-Tuning-Aware Quantization for Large Language Models" (Li, Yu, Liang, He,
Karampatziakis, Chen, Zhao; arXiv 2310.08659, ICLR 2024); record `loftq`.

Quantize and initialise the adapters together, min ‖W − Q − ABᵀ‖_F, by alternating (Algorithm 1)
Q_t = q_N(W − A_{t−1}B_{t−1}ᵀ) and A_t B_tᵀ = SVD_r(W − Q_t) (A = U√Σ, B = V√Σ),
from A₀B₀ᵀ = 0; then LoRA fine-tunes A, B on the frozen Q. With one step it is QLoRA's Q plus the
best rank-r correction of its error, so ‖W − (Q + ABᵀ)‖ ≤ ‖W − Q_QLoRA‖ always.

Implemented (fidelity: exact for the initialisation): `loftq_init` (the alternation, split √σ between
the factors as the official code and peft's `loftq_init` do), with the quantizer q_N passed in: at 4
bits the project's NF4 + double quantization (QLoRA's base), at 2-3 bits the asymmetric min-max
integer grid of `common/qat.py` (groups of `--group-size`; the paper's other quantizer is uniform);
`--iters` T (the paper uses T ≤ 5, 1 for many tables). The adapters are peft LoRA layers with
α = r (scaling 1, so Q + B·A is exactly the initialised weight) whose A and B are then overwritten
with LoftQ's factors, on all seven projections of every block. peft's own `loftq_init` hard-codes a CUDA
device (peft 0.21), so the tests compare against its SVD split with bitsandbytes' NF4 on the CPU.
Not implemented: the paper's GLUE / summarisation / GSM8K tasks; NF2 (the paper's 2-bit NF variant).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from reference_impls.common.layerwise import block_linears
from reference_impls.common.normal_float import nf4_encode
from reference_impls.common.qat import (
    check_recovery,
    dequantize,
    minmax_grid,
    quantize_codes,
    recovery_options,
    train_adapters,
)
from reference_impls.common.registry import Option, register
from reference_impls.common.training import add_lora


# ---------------------------------------------------------------- pure core
def loftq_init(weight: torch.Tensor, *, quantize: Callable[[torch.Tensor], torch.Tensor], rank: int,
               num_iter: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(Q (out, in), A (r, in), B (out, r)) with W ≈ Q + B·A (LoRA's layout: A = lora_A, B = lora_B).

    Alg. 1: Q_t = q(W − B_{t−1}A_{t−1}); B_t A_t = rank-r SVD of W − Q_t, √σ on each side."""
    if num_iter < 1:
        raise ValueError(f"--iters must be at least 1, got {num_iter}")
    W = weight.detach().float()  # (out, in)
    residual = W  # A₀ = B₀ = 0
    for _ in range(num_iter):
        Q = quantize(residual)  # Q_t = q_N(W − A_{t−1}B_{t−1}ᵀ)
        U, S, Vh = torch.linalg.svd(W - Q, full_matrices=False)  # SVD of W − Q_t
        root = S[:rank].sqrt()
        B = U[:, :rank] * root  # (out, r) = U√Σ
        A = root[:, None] * Vh[:rank]  # (r, in) = √Σ Vᵀ
        residual = W - B @ A  # fed to the next quantization
    return Q, A, B


def quantizer(*, bits: int, group_size: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """q_N: NF4 + double quantization at 4 bits, the asymmetric integer grid otherwise."""
    if bits == 4:
        from reference_impls.common.normal_float import nf4_decode

        return lambda w: nf4_decode(nf4_encode(w))

    def integer(w: torch.Tensor) -> torch.Tensor:
        scale, zero = minmax_grid(w, bits=bits, group_size=group_size)
        return dequantize(quantize_codes(w, scale, zero, bits=bits), scale, zero)

    return integer


OPTIONS = {**recovery_options(lr=1e-3), "rank": Option(8, "adapter rank r"),
           "iters": Option(5, "alternating steps T of Alg. 1")}
OPTIONS["bits"] = Option(3, "base weight bits (2-3: integer grid, 4: NF4)", choices=(2, 3, 4))
OPTIONS["group_size"] = Option(128, "input columns per integer-grid group (-1 = row; NF4 blocks are 64)")


@register(
    "loftq", family="finetuning", papers=["loftq"], fidelity="exact",
    summary="Alternating quantization + rank-r SVD initialisation of LoRA (peft), then fine-tuning",
    options=OPTIONS, bench=[{"bits": 3}, {"bits": 2}, {"bits": 4}], bench_models=("causal",),
)
def run_loftq(ctx, *, bits, group_size, max_steps, time_budget, lr, rank, iters) -> dict:
    check_recovery(bits=bits, max_steps=max_steps, time_budget=time_budget, lr=lr)
    if rank < 1:
        raise ValueError(f"--rank must be at least 1, got {rank}")
    if iters < 1:
        raise ValueError(f"--iters must be at least 1, got {iters}")
    q = quantizer(bits=bits, group_size=group_size)
    original = {name: m.weight.detach().clone().float() for name, m in block_linears(ctx.model, ctx.adapter)}
    # the PTQ start of every other method (QLoRA's base at 4 bits): perplexity_before
    plain = {name: q(w) for name, w in original.items()}
    for name, m in block_linears(ctx.model, ctx.adapter):
        m.weight.data.copy_(plain[name])
    before = ctx.heldout_perplexity()
    model = add_lora(ctx.model, rank=rank, alpha=rank, init_lora_weights=False)
    err_q = err_loftq = 0.0
    for name, m in block_linears(ctx.model, ctx.adapter):
        W = original[name]
        Q, A, B = loftq_init(W, quantize=q, rank=rank, num_iter=iters)
        m.base_layer.weight.data.copy_(Q)
        m.lora_A["default"].weight.data.copy_(A)
        m.lora_B["default"].weight.data.copy_(B)  # scaling α/r = 1
        if bits == 4:
            ctx.ledger.add(name, W.numel(), nf4_encode(Q).bits())
        else:
            ctx.ledger.add_quantized(name, *W.shape, bits=bits, group_size=group_size)
        err_q += float((W - plain[name]).pow(2).sum())
        err_loftq += float((W - Q - B @ A).pow(2).sum())
    init = ctx.heldout_perplexity()
    return train_adapters(ctx, model, before=before, bits=bits, max_steps=max_steps, time_budget=time_budget,
                          lr=lr, extra={"rank": rank, "iters": iters, "perplexity_loftq_init": init,
                                        "init_error_ptq": err_q ** 0.5, "init_error_loftq": err_loftq ** 0.5})
