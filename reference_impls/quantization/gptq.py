"""GPTQ: Accurate Post-Training Quantization for Generative Pre-trained Transformers.

Frantar, Ashkboos, Hoefler, Alistarh, arXiv 2210.17323 (ICLR 2023); catalog record `gptq`.

Implemented (fidelity: exact): Algorithm 1 of the paper, the lazy-batch Cholesky formulation, with
the conventions of the official code (IST-DASLab/gptq, `GPTQ.fasterquant`): dead inputs
(H[d,d] = 0) get H[d,d] = 1 and W[:, d] = 0; damping λ = damp · mean(diag H); H⁻¹ through a Cholesky
factorisation, then its upper Cholesky factor U, whose rows drive the updates; per-row min-max grids
(common.int_grid.minmax_params) from the whole original row for group_size = -1, otherwise when the
loop reaches a group's first column, from W as the previous blocks left it (not the in-block working
copy); act-order (columns by decreasing H[d,d], groups consecutive in that order); static groups
(all group grids from the weights before any update, indexed by original column).
Inside each block the per-column rank-1 updates are themselves batched in sub-blocks of 16 columns
(the same lazy-batch algebra one level down; identical results in exact arithmetic, tested against
an unbatched Algorithm 1 in float64), which cuts the memory traffic of the inner loop on CPU.
Also implemented: the model-level sequential walk of the official `*_sequential` functions
(layerwise.walk_blocks; all linears of a block calibrated together, its default).
Not implemented: `--true-sequential`, MSE grid search (`mse=True`), the packed 3/4-bit kernels
(weights are stored de-quantized; the storage cost is accounted in bits).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from reference_impls.common.hessian import add_damping, inverse_upper_cholesky, mark_dead_inputs
from reference_impls.common.int_grid import ColumnGrid, fake_quantize, minmax_params
from reference_impls.common.registry import Option, register
from reference_impls.common.storage import n_groups, quantized_bits

SUB_BLOCK = 16  # columns per inner lazy batch inside a block of `block_size`


@dataclass
class GPTQResult:
    weight: torch.Tensor  # de-quantized, (out, in), original column order
    scale: torch.Tensor  # (out, n_groups)
    zero: torch.Tensor  # (out, n_groups)
    g_idx: torch.Tensor  # (in,) group of each original input column
    loss: float  # Σ (w - q)² / [U]_qq² / 2, the official code's error estimate


def gptq(weight: torch.Tensor, hessian: torch.Tensor, *, bits: int = 4, group_size: int = -1,
         sym: bool = False, act_order: bool = False, block_size: int = 128, damp: float = 0.01,
         static_groups: bool = False, pruned: torch.Tensor | None = None) -> GPTQResult:
    """GPTQ with its grid parameters (see gptq_quantize).

    `pruned` (bool, (out, in)): weights a previous stage pruned stay exactly zero — each column is
    quantized, its pruned entries set to zero and the whole error spread by the same update, which is
    SparseGPT's joint pruning-and-quantization step with the mask fixed (used by compositions)."""
    dtype = torch.promote_types(weight.dtype, torch.float32)
    W = weight.to(dtype).clone()  # (out, in)
    H = hessian.to(dtype).clone()  # (in, in)
    n_out, n_in = W.shape
    grid = ColumnGrid(W, bits=bits, group_size=group_size, sym=sym)  # whole-row grid before dead columns
    gs = grid.width
    dead = mark_dead_inputs(H)
    W[:, dead] = 0
    if grid.grouped and static_groups:
        static = [minmax_params(W[:, i : i + gs], bits=bits, sym=sym) for i in range(0, n_in, gs)]

    perm = torch.argsort(torch.diag(H), descending=True) if act_order else torch.arange(n_in, device=W.device)
    if act_order:
        W, H = W[:, perm], H[perm][:, perm]
    P = None if pruned is None else pruned.to(W.device)[:, perm]  # (out, in) in the sweep's order

    add_damping(H, damp)
    U = inverse_upper_cholesky(H)  # (in, in)

    Q = torch.zeros_like(W)
    losses = torch.zeros(n_out, dtype=dtype, device=W.device)
    perm_list = perm.tolist()
    for i1 in range(0, n_in, block_size):
        i2 = min(i1 + block_size, n_in)
        W1 = W[:, i1:i2].clone()  # (out, B) working copy, updated column by column
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]  # (B, B)
        for s1 in range(0, i2 - i1, SUB_BLOCK):
            s2 = min(s1 + SUB_BLOCK, i2 - i1)
            for i in range(s1, s2):
                col = i1 + i
                w = W1[:, i]  # (out,)
                if grid.grouped and static_groups:
                    q = fake_quantize(w, *static[perm_list[col] // gs], grid.maxq)
                else:
                    q = grid.quantize(w, col, W)  # from W: finished blocks' updates, not this block's
                if P is not None:
                    q = q.masked_fill(P[:, col], 0)
                Q1[:, i] = q
                err = (w - q) / U1[i, i]  # (out,)
                W1[:, i:s2].addr_(err, U1[i, i:s2], alpha=-1)  # Algorithm 1: w_{q:} -= err · U_{q,q:}
                Err1[:, i] = err
            # The lazy batch one level down: the block's later columns take this sub-block's errors in
            # one matmul instead of a memory-bound rank-1 update per column (same algebra).
            W1[:, s2:].addmm_(Err1[:, s1:s2], U1[s1:s2, s2:], alpha=-1)
        losses += Err1.pow(2).sum(1) / 2
        Q[:, i1:i2] = Q1
        W[:, i2:].addmm_(Err1, U[i1:i2, i2:], alpha=-1)  # the lazy batch update of later columns

    scales, zeros = grid.scales, grid.zeros
    if grid.grouped and static_groups:
        scales, zeros = [s for s, _ in static], [z for _, z in static]
        g_idx = perm // gs  # static grids belong to original column ranges
    elif grid.grouped:
        g_idx = torch.arange(n_in, device=W.device) // gs  # consecutive in the (permuted) loop order
    else:
        g_idx = torch.zeros(n_in, dtype=torch.long, device=W.device)
    if act_order:
        inv = torch.argsort(perm)
        Q, g_idx = Q[:, inv], g_idx[inv]
    return GPTQResult(Q.to(weight.dtype), torch.stack(scales, 1), torch.stack(zeros, 1), g_idx,
                      float(losses.sum()))


def gptq_quantize(weight: torch.Tensor, hessian: torch.Tensor, *, bits: int = 4, group_size: int = -1,
                  sym: bool = False, act_order: bool = False, block_size: int = 128, damp: float = 0.01,
                  static_groups: bool = False) -> torch.Tensor:
    """The de-quantized GPTQ weight (out, in), same dtype as `weight`; `hessian` = 2/n Σ x xᵀ (in, in)."""
    return gptq(weight, hessian, bits=bits, group_size=group_size, sym=sym, act_order=act_order,
                block_size=block_size, damp=damp, static_groups=static_groups).weight


@register(
    "gptq", family="quantization", papers=["gptq"], fidelity="exact",
    summary="Second-order post-training weight quantization with lazy-batch Cholesky updates",
    options={
        "bits": Option(4, "bits per weight (2-8)"),
        "group_size": Option(-1, "input columns per quantization group (-1 = whole row)"),
        "sym": Option(False, "symmetric grid (no stored zero point)"),
        "act_order": Option(False, "quantize columns in order of decreasing H[d,d]"),
        "static_groups": Option(False, "fit all group grids before any update (with act-order)"),
        "block_size": Option(128, "columns per lazy batch"),
        "damp": Option(0.01, "dampening, as a fraction of mean diag(H)"),
    },
    bench=[{"bits": b, "group_size": g} for b in (3, 4, 8) for g in (-1, 128)],
)
def run_gptq(ctx, *, bits: int, group_size: int, sym: bool, act_order: bool, static_groups: bool,
             block_size: int, damp: float) -> dict:
    """Quantize block by block on calibration activations from the already-quantized prefix."""
    if not 2 <= bits <= 8:
        raise ValueError(f"--bits must be between 2 and 8, got {bits}")
    total_loss = 0.0

    def process(block) -> None:
        nonlocal total_loss
        for name in block.linears:
            res = gptq(block.weight(name), block.stats[name].hessian, bits=bits, group_size=group_size,
                       sym=sym, act_order=act_order, block_size=block_size, damp=damp,
                       static_groups=static_groups, pruned=ctx.pruned_masks.get(f"{block.name}.{name}"))
            block.set_weight(name, res.weight)
            total_loss += res.loss
            n_out, n_in = res.weight.shape
            cost = quantized_bits(n_out, n_in, bits=bits, group_size=group_size, sym=sym)
            if act_order and not static_groups and n_groups(n_in, group_size) > 1:
                # Groups are no longer column ranges: each input column stores its group index.
                cost += n_in * math.ceil(math.log2(n_groups(n_in, group_size)))
            ctx.ledger.add(f"{block.name}.{name}", n_out * n_in, cost, value_bits=bits)

    ctx.walk(process, stats=("hessian",))
    return {"gptq_loss": total_loss}
