"""LoSparse: "LoSparse: Structured Compression of Large Language Models based on Low-Rank and Sparse
Approximation" (Li, Yu, Zhang, Liang, He, Chen, Zhao; arXiv 2306.11222, ICML 2023); catalog record
`losparse`.

A weight matrix is a low-rank part, which captures the coherent directions its neurons share, plus a
sparse part, which keeps what is specific to single neurons: W ≈ L R + S. Pruning S alone (instead of
W) removes neurons' private detail without losing the shared subspace, and the low-rank part alone
would discard the incoherent detail that S keeps.

Implemented (fidelity: simplified), following the official code (yxli2123/LoSparse, `utils.py`): L =
U_k Σ_k^{1/2}, R = Σ_k^{1/2} V_kᵀ from the SVD of W, S = W − L R; S pruned *structurally* by the
official `row_col` rule (the q/k/v projections lose output rows, every other linear input columns), by
the importance |S ⊙ ∂L/∂S| (the loss gradient at the uncompressed model, where ∂L/∂S = ∂L/∂W), averaged
over calibration batches and summed over each row or column, with one global threshold over all layers
keeping `--keep` of S's entries (`mask_with_threshold`). For the sentence encoder, which has no
training loss here, the importance is |S| (the official "Magnitude" pruner). Rank k =
int(m·n·r / (m + n)) (DESIGN §6 `--ratio`; the official code rounds up). Storage: the factors and the
kept rows/columns of S at 16 bits plus one bit per row/column saying which are kept.
Not implemented: the iterative cubic pruning schedule during fine-tuning with PLATON's smoothed
importance and the knowledge-distillation variant: here S is pruned once, without training.
"""

from __future__ import annotations

import torch

from reference_impls.common.adapters import get_weight
from reference_impls.common.layerwise import block_linears
from reference_impls.common.registry import Option, register
from reference_impls.common.storage import rank_for_ratio
from reference_impls.common.training import causal_lm_loss


# ---------------------------------------------------------------- pure core
def low_rank_plus_residual(weight: torch.Tensor, *, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(L R, S): the rank-k part from the SVD (L = U_k Σ_k^{1/2}, R = Σ_k^{1/2} V_kᵀ) and S = W − L R."""
    W = weight.double()
    U, s, Vh = torch.linalg.svd(W, full_matrices=False)
    root = s[:rank].sqrt()
    LR = (U[:, :rank] * root) @ (root[:, None] * Vh[:rank])  # (out, in)
    return LR.to(weight.dtype), (W - LR).to(weight.dtype)


def line_importance(importance: torch.Tensor, *, by_rows: bool) -> torch.Tensor:
    """The official structured score: each entry gets the sum over its row (by_rows) or column."""
    return importance.sum(1, keepdim=True).expand_as(importance) if by_rows else \
        importance.sum(0, keepdim=True).expand_as(importance)


def losparse_compress(weight: torch.Tensor, keep_mask: torch.Tensor, *, rank: int) -> torch.Tensor:
    """L R + S ⊙ mask, same shape and dtype as `weight`."""
    LR, S = low_rank_plus_residual(weight, rank=rank)
    return LR + S * keep_mask


def global_keep_masks(scores: dict[str, torch.Tensor], keep: float) -> dict[str, torch.Tensor]:
    """One threshold over every layer's (structured) scores: the top `keep` fraction of entries stays."""
    flat = torch.cat([s.reshape(-1) for s in scores.values()]).double()
    n_drop = int(flat.numel() * (1 - keep))
    if n_drop == 0:
        return {n: torch.ones_like(s, dtype=torch.bool) for n, s in scores.items()}
    threshold = torch.kthvalue(flat, n_drop).values
    return {n: s.double() > threshold for n, s in scores.items()}


# ---------------------------------------------------------------- model-level entry
def mean_abs_sensitivity(ctx, residual: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """|S ⊙ ∂L/∂W| averaged over calibration batches (the official `(p * p.grad).abs()`)."""
    modules = dict(block_linears(ctx.model, ctx.adapter))
    loss_fn = causal_lm_loss(ctx.model)
    score = {n: torch.zeros_like(residual[n]) for n in modules}
    for batch in ctx.calibration:
        ctx.model.zero_grad(set_to_none=True)
        loss_fn(batch).backward()
        for n, m in modules.items():
            g = m.weight.grad.float()
            g = g if g.shape == residual[n].shape and not hasattr(m, "nf") else g.t()  # GPT-2 Conv1D
            score[n] += (residual[n] * g).abs() / len(ctx.calibration)
    ctx.model.zero_grad(set_to_none=True)
    return score


@register(
    "losparse", family="low_rank", papers=["losparse"], fidelity="simplified",
    summary="Low-rank (SVD) plus a structurally pruned sparse residual, importance |S·grad|",
    options={"ratio": Option(0.4, "fraction of each linear's parameters the low-rank factors keep (0-1]"),
             "keep": Option(0.2, "fraction of the residual S's entries kept (whole rows / columns)")},
    bench=[{"ratio": 0.4, "keep": 0.2}, {"ratio": 0.2, "keep": 0.2}],
)
def run_losparse(ctx, *, ratio: float, keep: float) -> dict:
    rank_for_ratio(1, 1, ratio)
    if not 0 <= keep <= 1:
        raise ValueError(f"--keep must be in [0, 1], got {keep}")
    weights = {n: get_weight(m).detach().float().clone() for n, m in block_linears(ctx.model, ctx.adapter)}
    ranks = {n: rank_for_ratio(*w.shape, ratio) for n, w in weights.items()}
    residual = {n: low_rank_plus_residual(w, rank=ranks[n])[1] for n, w in weights.items()}
    importance = mean_abs_sensitivity(ctx, residual) if ctx.loaded.kind == "causal" else \
        {n: s.abs() for n, s in residual.items()}
    by_rows = {n: any(p in n.rsplit(".", 1)[-1] for p in ("q", "k", "v")) for n in weights}  # official rule
    scores = {n: line_importance(s, by_rows=by_rows[n]) for n, s in importance.items()}
    masks = global_keep_masks(scores, keep)
    kept_entries = 0

    def compress(name: str, w: torch.Tensor) -> torch.Tensor:
        nonlocal kept_entries
        m, n = w.shape
        mask = masks[name]
        kept_entries += int(mask.sum())
        lines = m if by_rows[name] else n
        ctx.ledger.add_low_rank(name, m, n, rank=ranks[name], extra_bits=int(mask.sum()) * 16 + lines)
        return losparse_compress(w, mask, rank=ranks[name])

    ctx.map_linears(compress)
    return {"sparse_kept": kept_entries / sum(w.numel() for w in weights.values())}
