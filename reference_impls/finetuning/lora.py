"""LoRA: "LoRA: Low-Rank Adaptation of Large Language Models" (Hu, Shen, Wallis, Allen-Zhu, Li, Wang,
Wang, Chen; arXiv 2106.09685, ICLR 2022); record `lora`.

h = W₀x + (α/r)·BAx (eq. 3): W₀ frozen, A (r × in, Kaiming-uniform) and B (out × r, zeros) trained, so
training starts exactly at the base model. Here W₀ is the b-bit RTN-quantized weight (asymmetric
min-max groups, `common/qat.py`) and the adapters recover the quantization loss; `--bits 16` is LoRA
on the unquantized model, the paper's own setting.

Implemented (fidelity: exact, through `peft`, the ecosystem's LoRA, via `common.training.add_lora`):
adapters on all seven projections of every block (the paper adapts W_q and W_v; later practice and
QLoRA adapt every linear), rank `--rank`, α = 2r, no dropout; next-token loss on the calibration
windows; the adapters stay separate (merging them would undo the quantization) and their 16-bit
parameters are counted in the storage.
Not implemented: the paper's GPT-2/GPT-3/RoBERTa tasks — here held-out perplexity after a few minutes.
"""

from __future__ import annotations

from reference_impls.common.qat import (
    DATA,
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
OPTIONS["data"] = Option("calibration", "training text: the calibration windows, or the standard library's "
                         "tests (a domain shift; reports perplexity_domain)", choices=DATA)


@register(
    "lora", family="finetuning", papers=["lora"], fidelity="exact",
    summary="peft LoRA adapters on the RTN-quantized (or full-precision) model",
    # bits 16: the same adapters on the unquantized model, to separate recovery from plain finetuning
    options=OPTIONS, bench=[*RECOVERY_BENCH, {"bits": 16}, {"bits": 3, "data": "stdlib-tests"}],
    bench_models=("causal",),
)
def run_lora(ctx, *, bits, group_size, max_steps, time_budget, lr, rank, data="calibration") -> dict:
    check_recovery(bits=bits, max_steps=max_steps, time_budget=time_budget, lr=lr, allow_16=True)
    if rank < 1:
        raise ValueError(f"--rank must be at least 1, got {rank}")
    if data not in DATA:
        raise ValueError(f"--data must be one of {', '.join(DATA)}, got {data!r}")
    rtn_base(ctx, bits=bits, group_size=group_size)
    before = ctx.heldout_perplexity()
    model = add_lora(ctx.model, rank=rank)  # injects into ctx.model in place
    return train_adapters(ctx, model, before=before, bits=bits, max_steps=max_steps, time_budget=time_budget,
                          lr=lr, extra={"rank": rank}, data=data)
