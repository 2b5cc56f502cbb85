"""OWQ: "OWQ: Outlier-Aware Weight Quantization for Efficient Fine-Tuning and Inference of Large Language
Models" (Lee, Jin, Kim, Kim, Park; arXiv 2306.02272, AAAI 2024); catalog record `owq`.

A few input channels carry activation outliers, so the weight columns that read them are *weak*: a
small error there costs much. OWQ ranks columns by sensitivity λ_j ‖ΔW_:,j‖² (λ_j = H_jj, ΔW the
quantization error of the column, eq. 6), keeps the top k columns in 16 bits and quantizes the rest
with OPTQ/GPTQ; the weak columns are moved after all the others, so they receive the error
compensation of every quantized column and stay in 16 bits with those updates.

Implemented (fidelity: exact for the layer algorithm, as xvyaward/owq `GPTQ_OWQ`): the sensitivity
(`--sensitivity paper`: H_jj · ‖W_:,j − RTN(W)_:,j‖², or `hessian`: H_jj alone, the official code's
default without its Frobenius factor), weak columns last (after the act-order permutation of the rest
when `--act-order`), the per-row min-max grid fitted on the non-weak columns only, GPTQ's sweep over
them with the weak columns updated, dead inputs and damping as GPTQ. Storage: the codes and grid of
the quantized columns, 16 bits per weak weight and a 16-bit index per weak column.
Not implemented: OWQ's per-layer allocation of k from a global bit target (every linear keeps the same
fraction `--weak-ratio` here), weak-column fine-tuning (OWQ's task-specific adaptation) and kernels.
"""

from __future__ import annotations

import math

import torch

from reference_impls.common.hessian import add_damping, inverse_upper_cholesky, mark_dead_inputs
from reference_impls.common.int_grid import fake_quantize, minmax_params
from reference_impls.common.registry import Option, register
from reference_impls.common.storage import quantized_bits
from reference_impls.quantization.rtn import rtn_quantize

INDEX_BITS = 16


# ---------------------------------------------------------------- pure core
def column_sensitivity(weight: torch.Tensor, hessian: torch.Tensor, *, bits: int, kind: str = "paper"):
    """λ_j ‖ΔW_:,j‖² (eq. 6) with ΔW the per-row RTN error, or λ_j = H_jj alone; (in,)."""
    lam = torch.diag(hessian).float()
    if kind == "hessian":
        return lam
    return lam * (weight.float() - rtn_quantize(weight.float(), bits=bits)).pow(2).sum(0)


def owq_quantize(weight: torch.Tensor, hessian: torch.Tensor, *, bits: int = 3, n_weak: int = 0,
                 act_order: bool = False, sensitivity: str = "paper", block_size: int = 128,
                 damp: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """(de-quantized weight with its weak columns in full precision, weak column indices)."""
    W = weight.to(torch.promote_types(weight.dtype, torch.float32)).clone()  # (out, in)
    H = hessian.to(W.dtype).clone()
    n_out, n_in = W.shape
    weak = torch.argsort(column_sensitivity(W, H, bits=bits, kind=sensitivity), descending=True)[:n_weak]
    rest = torch.ones(n_in, dtype=torch.bool)
    rest[weak] = False
    normal = torch.nonzero(rest).flatten()
    if act_order:
        normal = normal[torch.argsort(torch.diag(H)[normal], descending=True)]
    ids = torch.cat([normal, weak])  # weak columns last: they absorb every update
    W, H = W[:, ids], H[ids][:, ids]
    n_q = n_in - n_weak
    scale, zero = minmax_params(W[:, :n_q], bits=bits, sym=False)  # the grid ignores weak columns
    W[:, mark_dead_inputs(H)] = 0
    add_damping(H, damp)
    U = inverse_upper_cholesky(H)
    maxq = 2**bits - 1
    for i1 in range(0, n_q, block_size):
        i2 = min(i1 + block_size, n_q)
        Err = torch.zeros(n_out, i2 - i1, dtype=W.dtype)
        for j in range(i1, i2):
            q = fake_quantize(W[:, j], scale, zero, maxq)
            Err[:, j - i1] = (W[:, j] - q) / U[j, j]
            W[:, j] = q
            W[:, j + 1 : i2].addr_(Err[:, j - i1], U[j, j + 1 : i2], alpha=-1)
        W[:, i2:].addmm_(Err, U[i1:i2, i2:], alpha=-1)  # later columns, weak ones included
    return W[:, torch.argsort(ids)].to(weight.dtype), weak


def owq_bits(n_out: int, n_in: int, *, bits: int, n_weak: int) -> int:
    return quantized_bits(n_out, n_in - n_weak, bits=bits) + n_weak * (n_out * 16 + INDEX_BITS)


# ---------------------------------------------------------------- model-level entry
@register(
    "owq", family="quantization", papers=["owq"], fidelity="exact",
    summary="GPTQ with the most sensitive (weak) input columns kept in 16 bits",
    options={
        "bits": Option(3, "bits per quantized weight (2-8)"),
        "weak_ratio": Option(0.01, "fraction of each linear's input columns kept in 16 bits"),
        "act_order": Option(False, "order the quantized columns by decreasing H[d,d]"),
        "sensitivity": Option("paper", "column ranking", choices=("paper", "hessian")),
        "damp": Option(0.01, "dampening, as a fraction of mean diag(H)"),
    },
    bench=[{"bits": b, "weak_ratio": r} for b in (2, 3) for r in (0.0, 0.01, 0.03)],
    bench_models=("causal",),
)
def run_owq(ctx, *, bits, weak_ratio, act_order, sensitivity, damp) -> dict:
    if not 2 <= bits <= 8:
        raise ValueError(f"--bits must be between 2 and 8, got {bits}")
    if not 0 <= weak_ratio < 1:
        raise ValueError(f"--weak-ratio must be in [0, 1), got {weak_ratio}")
    n_weak_total = 0

    def process(block) -> None:
        nonlocal n_weak_total
        for name in block.linears:
            w = block.weight(name)
            k = math.ceil(weak_ratio * w.shape[1])
            new, _ = owq_quantize(w, block.stats[name].hessian, bits=bits, n_weak=k, act_order=act_order,
                                  sensitivity=sensitivity, damp=damp)
            block.set_weight(name, new)
            n_weak_total += k
            ctx.ledger.add(f"{block.name}.{name}", w.numel(), owq_bits(*w.shape, bits=bits, n_weak=k))

    ctx.walk(process, stats=("hessian",))
    return {"weak_columns": n_weak_total}
