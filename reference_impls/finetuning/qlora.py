"""QLoRA: "QLoRA: Efficient Finetuning of Quantized LLMs" (Dettmers, Pagnoni, Holtzman, Zettlemoyer;
arXiv 2305.14314, NeurIPS 2023); record `qlora`.

Y = X·doubleDequant(c₁, c₂, W^NF4) + X·L₁·L₂·s: the base is frozen in 4-bit NormalFloat with
double-quantized absmax constants, gradients flow through the de-quantized weight into LoRA adapters
on every linear layer, computed in bf16.

Implemented (fidelity: simplified): the base stored as the project's NF4 + double quantization
(`common/normal_float.py`: equal bit for bit to bitsandbytes' codes, see `quantization/nf4.py`) in an
`NF4Linear` (uint8 codes and 8-bit absmax codes as buffers, decoded at every call, nothing there can
train), LoRA from `peft` on all seven projections of every block (rank `--rank`, α = 2r, no dropout),
bf16 autocast where the CPU has native bf16 (the shared loop), next-token loss on the calibration
windows; the adapters stay separate and count at 16 bits in the storage.
Not implemented: paged optimizers (a GPU-memory device), bitsandbytes' kernels (here NF4 is decoded in
PyTorch), the paper's instruction datasets and GPT-4 evaluation; the paper's r = 64, α = 16 are for
7-65B models (here r = 8 on a 6.6M-parameter model). NF4 is 4-bit only: `--bits` accepts 4.
"""

from __future__ import annotations

from reference_impls.common.fake_quant import swap_model_linears
from reference_impls.common.normal_float import NF4Linear
from reference_impls.common.qat import check_recovery, recovery_options, train_adapters
from reference_impls.common.registry import Option, register
from reference_impls.common.training import add_lora

OPTIONS = {**recovery_options(lr=1e-3), "rank": Option(8, "adapter rank r")}
OPTIONS["bits"] = Option(4, "base weight bits (NF4: 4 only)", choices=(4,))
OPTIONS["group_size"] = Option(64, "weights per NF4 absmax block (flattened, as bitsandbytes)")


def nf4_base(ctx, *, block_size: int) -> dict[str, NF4Linear]:
    """Every block linear becomes an NF4Linear (double quantization on); storage into the ledger."""
    def make(_name, w, old):
        return NF4Linear(w, getattr(old, "bias", None), block_size=block_size)

    new = swap_model_linears(ctx.model, ctx.adapter, make)
    for name, m in new.items():
        ctx.ledger.add(name, m.out_features * m.in_features, m.bits)
    return new


@register(
    "qlora", family="finetuning", papers=["qlora"], fidelity="simplified",
    summary="LoRA (peft) on a frozen NF4 + double-quantized base",
    options=OPTIONS, bench=[{}], bench_models=("causal",),
)
def run_qlora(ctx, *, bits, group_size, max_steps, time_budget, lr, rank) -> dict:
    if bits != 4:
        raise ValueError(f"--bits must be 4 for QLoRA (NF4), got {bits}")
    check_recovery(bits=bits, max_steps=max_steps, time_budget=time_budget, lr=lr)
    if rank < 1:
        raise ValueError(f"--rank must be at least 1, got {rank}")
    if group_size < 1:
        raise ValueError(f"--group-size must be a positive NF4 block size, got {group_size}")
    nf4_base(ctx, block_size=group_size)
    before = ctx.heldout_perplexity()
    model = add_lora(ctx.model, rank=rank)
    return train_adapters(ctx, model, before=before, bits=bits, max_steps=max_steps, time_budget=time_budget,
                          lr=lr, extra={"rank": rank})
