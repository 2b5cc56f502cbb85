"""AdaLoRA: "AdaLoRA: Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning" (Zhang, Chen,
Bukharin, Karampatziakis, He, Chen, Zhao; arXiv 2303.10512, ICLR 2023); record `adalora`.

Each update is W₀ + PΛQ with P, Q kept near orthogonal by a regulariser instead of a
real SVD; every singular triplet gets an importance score from smoothed sensitivity |w·∇w| and its
uncertainty, and a cubic schedule shrinks the total rank budget from `init_r` per matrix
to `target_r` on average, masking the least important singular values. Here W₀ is the b-bit
RTN-quantized weight (`common/qat.py`); `--bits 16` the unquantized model.

Implemented (fidelity: exact, through `peft`'s AdaLoRA, which follows the official code): adapters on
all seven projections of every block, `init_r` = 1.5·`target_r` (the paper's ratio), warm-up `tinit`
= 10% and final fine-tuning `tfinal` = 20% of `--max-steps`, budget updates every step, orthogonal
regularisation 0.5 (peft's default, added to the loss by peft). The shared loop zeroes gradients just
before each backward pass, so the gradients of step t are still in place when step t+1 begins: the
loss function calls peft's `update_and_allocate(t)` there, which is where the paper's loop calls it
(after the optimizer step, before the gradients are cleared), and once more after the last step.
Not implemented: the paper's GLUE / SQuAD / summarisation tasks. A run stopped by `--time-budget`
before `max_steps` ends with the rank schedule unfinished (the report says which stopped it).
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

OPTIONS = {**recovery_options(lr=1e-3), "rank": Option(8, "target average rank per matrix (init: 1.5x)")}
OPTIONS["bits"] = Option(3, "base weight bits (2-8; 16: unquantized base)")


def add_adalora(model, *, target_r: int, total_step: int):
    from peft import AdaLoraConfig, get_peft_model

    from reference_impls.common.adapters import adapter_for

    init_r = max(target_r + 1, round(1.5 * target_r))
    cfg = AdaLoraConfig(init_r=init_r, target_r=target_r, lora_alpha=2 * target_r, lora_dropout=0.0,
                        tinit=total_step // 10, tfinal=total_step // 5, deltaT=1, total_step=total_step,
                        target_modules=list(adapter_for(model).linear_names))
    return get_peft_model(model, cfg)


@register(
    "adalora", family="finetuning", papers=["adalora"], fidelity="exact",
    summary="peft AdaLoRA (SVD-form adapters, importance-driven rank budget) on the RTN-quantized model",
    options=OPTIONS, bench=RECOVERY_BENCH, bench_models=("causal",),
)
def run_adalora(ctx, *, bits, group_size, max_steps, time_budget, lr, rank) -> dict:
    check_recovery(bits=bits, max_steps=max_steps, time_budget=time_budget, lr=lr, allow_16=True)
    if rank < 1:
        raise ValueError(f"--rank must be at least 1, got {rank}")
    if max_steps < 10:
        raise ValueError(f"--max-steps must be at least 10 for AdaLoRA's rank schedule, got {max_steps}")
    rtn_base(ctx, bits=bits, group_size=group_size)
    before = ctx.heldout_perplexity()
    peft_model = add_adalora(ctx.model, target_r=rank, total_step=max_steps)
    device = next(peft_model.parameters()).device
    step = {"t": 0}

    def loss_fn(batch):
        if step["t"] > 0:  # last step's gradients are still there: the budget update of step t-1
            peft_model.base_model.update_and_allocate(step["t"] - 1)
        step["t"] += 1
        ids = batch["input_ids"].to(device)
        return peft_model(input_ids=ids, labels=ids, use_cache=False).loss  # + orthogonal regulariser

    def final_update(result):  # the budget update that follows the last optimizer step
        peft_model.base_model.update_and_allocate(result.steps - 1)

    metrics = train_adapters(ctx, peft_model, before=before, bits=bits, max_steps=max_steps,
                             time_budget=time_budget, lr=lr, loss_fn=loss_fn, extra={"rank": rank},
                             after=final_update)
    singular = [m.lora_E["default"] for m in peft_model.modules() if hasattr(m, "lora_E")]  # (init_r, 1)
    metrics.update(init_rank=singular[0].shape[0], final_ranks=[int((e != 0).sum()) for e in singular])
    return metrics
