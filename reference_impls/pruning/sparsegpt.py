"""SparseGPT: "SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot" (Frantar,
Alistarh; arXiv 2301.00774).

Implemented: the OBS-based mask selection and weight update in the lazy-batch formulation of the
official code: Hessian proxy H = 2/n·Σxxᵀ, dead inputs set to H[d,d]=1 and W[:,d]=0, damping by
`damp`·mean(diag H), U = upper Cholesky factor of H⁻¹; adaptive masks chosen per block of
`block_size` columns jointly over all rows by w²/[U]ₖₖ² (eq. 3 of the paper with the Cholesky
trick), N:M masks per group of M consecutive inputs chosen when the sweep reaches the group; the
error of each pruned (and optionally quantized) column is spread onto the remaining columns of the
block, and the block's accumulated error onto all later columns (Algorithm 1). As in the GPTQ core,
the per-column rank-1 updates inside a block are themselves batched in sub-blocks of 16 columns (a
multiple of M for N:M; the same algebra, fewer passes over memory), the sweep works on each block
transposed (one column of W = one contiguous row), and a block's adaptive mask is a
selection (`kthvalue`), not the official code's full sort; masks and weights agree with a plain
transcription of the official loop (tests/test_sparsegpt_speed.py). Joint quantization
(`bits`) uses GPTQ's column grid (`reference_impls.common.int_grid.ColumnGrid`): the group's scale
and zero taken when the sweep reaches the group's first column, the whole-row grid from the weight
before dead columns are zeroed, as GPTQ (and the official SparseGPT code) does.
Deviation: each adaptive block prunes exactly ⌊count·sparsity⌋ weights (the official threshold
`<= sorted[k]` prunes one more, so 0% sparsity would still prune one weight per block).
Not implemented: the repository's per-layer `minlayer/maxlayer` switches and the 50%-sparse-prefix
variant. Fidelity: exact.
"""

from __future__ import annotations

import torch

from reference_impls.common.hessian import inverse_hessian_cholesky
from reference_impls.common.int_grid import ColumnGrid
from reference_impls.common.pruning import check_nm, check_sparsity, global_mask

SUB_BLOCK = 16  # columns per inner lazy batch inside a block of `block_size` (as in the GPTQ core)


def sparsegpt_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    *,
    sparsity: float = 0.5,
    prune_n: int = 0,
    prune_m: int = 0,
    block_size: int = 128,
    damp: float = 0.01,
    bits: int = 0,
    group_size: int = -1,
    sym: bool = False,
) -> torch.Tensor:
    """Prune `weight` (out, in) to `sparsity` (or N:M) and update the kept weights; `bits` > 0 also
    quantizes them jointly. Returns a new tensor of the input's shape and dtype."""
    rows, cols = weight.shape
    if prune_n:
        check_nm(prune_n, prune_m, cols)
        if block_size % prune_m:
            raise ValueError(f"block_size {block_size} must be a multiple of prune_m {prune_m}")
    else:
        check_sparsity(sparsity)
    W = weight.detach().clone().float()  # (out, in)
    # GPTQ's grid; without groups it is fitted here, before dead columns are zeroed, as GPTQ does
    grid = ColumnGrid(W, bits=bits, group_size=group_size, sym=sym) if bits else None
    # float32 like the official code and the GPTQ core (a float64 factorisation cost 2x the float32 one
    # on a 4096-input layer, more than the whole sweep; results agree to float32 rounding)
    Hinv, dead = inverse_hessian_cholesky(hessian.to(W.device), damp=damp, dtype=torch.float32)
    W[:, dead] = 0
    # inner lazy batch: a multiple of M, so an N:M group never straddles two sub-blocks
    sub = SUB_BLOCK if not prune_n else prune_m * -(-SUB_BLOCK // prune_m)
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        # the block transposed, (B, out): the sweep reads and updates one column of W at a time, which
        # is a contiguous row here (a strided column in W's layout cost ~15% on 2:4 at 4096 inputs)
        WT = W[:, i1:i2].t().contiguous()
        ErrT = torch.empty_like(WT)
        QT = torch.empty_like(WT) if grid is not None else None
        Hinv1 = Hinv[i1:i2, i1:i2]  # (B, B)
        d1 = torch.diag(Hinv1)  # (B,)
        if prune_n:
            maskT = torch.zeros_like(WT, dtype=torch.bool)
        else:
            maskT = global_mask(WT**2 / d1.reshape(-1, 1) ** 2, sparsity)  # adaptive mask for the block
        for s1 in range(0, i2 - i1, sub):
            s2 = min(s1 + sub, i2 - i1)
            for i in range(s1, s2):
                if prune_n and i % prune_m == 0:
                    score = WT[i : i + prune_m] ** 2 / d1[i : i + prune_m].reshape(-1, 1) ** 2  # (M, out)
                    maskT.scatter_(0, i + torch.topk(score, prune_n, dim=0, largest=False).indices, True)
                w = WT[i]  # (out,)
                if grid is None:
                    err1 = w * maskT[i] / Hinv1[i, i]  # (w - q)/[U]_ii with q = w kept, 0 pruned
                else:
                    QT[i] = grid.quantize(w.masked_fill(maskT[i], 0), i1 + i, W)
                    err1 = (w - QT[i]) / Hinv1[i, i]
                WT[i + 1 : s2].addr_(Hinv1[i, i + 1 : s2], err1, alpha=-1)  # Algorithm 1, in the sub-block
                ErrT[i] = err1
            # the sub-block's errors reach the block's later columns in one matmul (same algebra as a
            # rank-1 update per column, as in the GPTQ core)
            WT[s2:].addmm_(Hinv1[s1:s2, s2:].t(), ErrT[s1:s2], alpha=-1)
        W[:, i1:i2] = (WT.masked_fill_(maskT, 0) if grid is None else QT).t()
        W[:, i2:].addmm_(ErrT.t(), Hinv[i1:i2, i2:], alpha=-1)  # lazy update of all later columns
    return W.to(weight.dtype)


# ---------------------------------------------------------------- model-level entry
from reference_impls.common.pruning import SPARSITY_OPTIONS, pruned_summary  # noqa: E402
from reference_impls.common.registry import Option, register  # noqa: E402
from reference_impls.common.storage import quantized_bits  # noqa: E402


@register(
    "sparsegpt",
    family="pruning",
    papers=["sparsegpt"],
    bench=[
        {"sparsity": 0.5},
        {"prune_n": 2, "prune_m": 4},
        {"sparsity": 0.7},
        {"sparsity": 0.5, "bits": 4, "group_size": 128},
    ],
    fidelity="exact",
    summary=(
        "SparseGPT: OBS mask selection and weight update, unstructured or N:M, optional joint quantization"
    ),
    options={
        **SPARSITY_OPTIONS,
        "block_size": Option(128, "columns per lazy-update block (and per adaptive mask)"),
        "damp": Option(0.01, "dampening, fraction of the mean diagonal of H"),
        "bits": Option(0, "joint quantization bit width on the GPTQ grid (0 = none)"),
        "group_size": Option(-1, "quantization group size along the input (-1 = whole row)"),
        "sym": Option(False, "symmetric quantization grid"),
    },
)
def run_sparsegpt(ctx, *, sparsity, prune_n, prune_m, block_size, damp, bits, group_size, sym) -> dict:
    pruned, formats = {}, {}

    def process(block):
        for name in block.linears:
            W = block.weight(name)
            new = sparsegpt_prune(
                W, block.stats[name].hessian, sparsity=sparsity, prune_n=prune_n, prune_m=prune_m,
                block_size=block_size, damp=damp, bits=bits, group_size=group_size, sym=sym,
            )  # fmt: skip
            block.set_weight(name, new)
            full = f"{block.name}.{name}"
            pruned[full] = new
            rows, cols = W.shape
            params = (
                quantized_bits(rows, cols, bits=bits, group_size=group_size, sym=sym) - rows * cols * bits
            )
            formats[full] = ctx.ledger.add_sparse(
                full, new, prune_n=prune_n, prune_m=prune_m, value_bits=bits or 16,
                extra_bits=params if bits else 0,
            )

    ctx.walk(process, stats=("hessian",))
    return pruned_summary(ctx, pruned, formats)
