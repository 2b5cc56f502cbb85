"""DoRA: "DoRA: Weight-Decomposed Low-Rank Adaptation" (Liu, Wang, Yin, Molchanov, Wang, Cheng, Chen;
arXiv 2402.09353, ICML 2024); record `dora`.

W' = m · (W₀ + BA) / ‖W₀ + BA‖_c: the weight split into a magnitude vector m (one norm per
output row of the (out, in) matrix — the paper's column norm of its (in, out) layout — initialised to
‖W₀‖_c) and a direction updated by LoRA; m, A and B train. Here W₀ is the b-bit RTN-quantized weight
(`common/qat.py`), `--bits 16` the unquantized model.

Implemented (fidelity: exact, through `peft`'s `use_dora=True`, which follows the official code: the
norm is treated as a constant in the backward pass, section 4.3 of the paper): adapters on all seven
projections of every block, rank `--rank`, α = 2r; the adapters and magnitudes stay separate and count
in the storage. Not implemented: the paper's commonsense / vision-language tasks.
"""

from __future__ import annotations

from reference_impls.common.qat import (
    RECOVERY_BENCH,
    check_recovery,
    recovery_options,
    rtn_base,
    train_adapters,
)
from reference_impls.common.registry import Option, register
from reference_impls.common.training import add_lora

OPTIONS = {**recovery_options(lr=1e-3), "rank": Option(8, "adapter rank r")}
OPTIONS["bits"] = Option(3, "base weight bits (2-8; 16: unquantized base)")


@register(
    "dora", family="finetuning", papers=["dora"], fidelity="exact",
    summary="peft DoRA (magnitude + LoRA direction) on the RTN-quantized (or full-precision) model",
    options=OPTIONS, bench=RECOVERY_BENCH, bench_models=("causal",),
)
def run_dora(ctx, *, bits, group_size, max_steps, time_budget, lr, rank) -> dict:
    check_recovery(bits=bits, max_steps=max_steps, time_budget=time_budget, lr=lr, allow_16=True)
    if rank < 1:
        raise ValueError(f"--rank must be at least 1, got {rank}")
    rtn_base(ctx, bits=bits, group_size=group_size)
    before = ctx.heldout_perplexity()
    model = add_lora(ctx.model, rank=rank, use_dora=True)
    return train_adapters(ctx, model, before=before, bits=bits, max_steps=max_steps, time_budget=time_budget,
                          lr=lr, extra={"rank": rank})
