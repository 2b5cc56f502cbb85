"""DSnoT: "Dynamic Sparse No Training: Training-Free Fine-tuning for Sparse LLMs" (Zhang, Zhao, Lin,
Sun, Yang, Wang, Shi, Jin, Ji; arXiv 2310.08915).

Implemented: the training-free prune-and-grow refinement of an initial mask (from magnitude, Wanda
or SparseGPT scores), row by row and vectorized over rows. The expected reconstruction error of row
i is ε_i = Σ_{j pruned} W_ij·E[x_j] (the mean output the pruning removed). Each cycle regrows the
pruned weight whose contribution W_ij·E[x_j]/Var(x_j)^p most reduces ε in its sign's direction and
prunes a kept weight of opposite-sign contribution with the smallest Wanda score |W_ij|·‖x_j‖
(unstructured), or the kept weight with the smallest initial score inside the regrown weight's
group of M (N:M), so the sparsity pattern stays exact. A row stops once |ε_i| ≤ `update_threshold`,
when its candidates run out, when a swap would not reduce |ε_i|, or (N:M, as in the repository) when
it would flip the sign of ε_i; at most `max_cycles` swaps per row. No weight values change.
Units: `input_mean` is the per-token mean. The repository sums it over a 2048-token sequence, so its
threshold 0.1 corresponds to 0.1/2048 here (the default).
Not implemented: the repository's pruning-side variance power (defined but unused there).
Fidelity: simplified. Two safeguards the repository lacks: a swap must reduce |ε_i| (without it the
swaps overshoot back and forth and, on our tests, end with a larger error than after two cycles),
and candidates whose contribution has the wrong sign are never swapped (the repository may reach
them after exhausting the right-signed ones, which can change a row's sparsity).
"""

from __future__ import annotations

import torch

from reference_impls.common.pruning import check_nm

_NONE = torch.iinfo(torch.long).max


def _ranked(key: torch.Tensor, valid: torch.Tensor, descending: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row column order of `key` over `valid` entries, invalid ones last; and the valid count."""
    fill = float("-inf") if descending else float("inf")
    order = torch.sort(key.masked_fill(~valid, fill), dim=1, descending=descending, stable=True).indices
    return order, valid.sum(dim=1)


def dsnot_refine(
    weight: torch.Tensor,
    pruned: torch.Tensor,
    input_mean: torch.Tensor,
    input_var: torch.Tensor,
    input_norm: torch.Tensor,
    *,
    initial_score: torch.Tensor | None = None,
    prune_n: int = 0,
    prune_m: int = 0,
    max_cycles: int = 50,
    update_threshold: float = 0.1 / 2048,
    var_power: float = 1.0,
) -> torch.Tensor:
    """Return a refined copy of the boolean mask `pruned` (True = pruned), same count per row/group."""
    W = weight.detach().float()  # (out, in)
    rows, cols = W.shape
    pruned = pruned.clone()
    contrib = W * input_mean.float().reshape(1, -1)  # (out, in): W_ij·E[x_j]
    grow_key = contrib / input_var.float().clamp_min(1e-12).reshape(1, -1) ** var_power
    eps = (contrib * pruned).sum(dim=1)  # (out,)
    start_sign = torch.sign(eps)
    active = eps.abs() > update_threshold
    r = torch.arange(rows)
    # regrow lists: largest positive key first (for ε > 0), most negative first (for ε < 0)
    grow_pos, n_gpos = _ranked(grow_key, pruned & (grow_key > 0), descending=True)
    grow_neg, n_gneg = _ranked(grow_key, pruned & (grow_key < 0), descending=False)
    ptr = torch.zeros(rows, 2, dtype=torch.long)  # next regrow candidate in (pos, neg) lists
    if prune_n:
        check_nm(prune_n, prune_m, cols)
        init = (initial_score if initial_score is not None else W.abs()).float().clone()
        init[pruned] = float("inf")  # only currently kept weights may be pruned
    else:
        wanda = W.abs() * input_norm.float().reshape(1, -1)
        cut_neg, n_cneg = _ranked(wanda, ~pruned & (contrib < 0), descending=False)
        cut_pos, n_cpos = _ranked(wanda, ~pruned & (contrib > 0), descending=False)
        cptr = torch.zeros(rows, 2, dtype=torch.long)
    for _ in range(max_cycles):
        if not active.any():
            break
        positive = eps > 0
        side = (~positive).long()  # 0: ε > 0 uses the positive lists, 1: ε < 0 the negative ones
        g_at = ptr[r, side]
        g_ok = g_at < torch.where(positive, n_gpos, n_gneg)
        g_idx = torch.where(
            positive, grow_pos[r, g_at.clamp_max(cols - 1)], grow_neg[r, g_at.clamp_max(cols - 1)]
        )
        if prune_n:
            start = g_idx - g_idx % prune_m
            group = start.unsqueeze(1) + torch.arange(prune_m)  # (out, M)
            p_idx = start + init.gather(1, group).argmin(dim=1)
            p_ok = torch.isfinite(init[r, p_idx])
        else:
            c_at = cptr[r, side]
            p_ok = c_at < torch.where(positive, n_cneg, n_cpos)
            p_idx = torch.where(
                positive, cut_neg[r, c_at.clamp_max(cols - 1)], cut_pos[r, c_at.clamp_max(cols - 1)]
            )
        eps_after = eps + contrib[r, p_idx] - contrib[r, g_idx]
        go = active & g_ok & p_ok & (eps_after.abs() < eps.abs())
        if prune_n:
            go &= torch.sign(eps_after) == start_sign
        rr = r[go]
        pruned[rr, g_idx[go]] = False
        pruned[rr, p_idx[go]] = True
        eps = torch.where(go, eps_after, eps)
        ptr[rr, side[go]] += 1
        if prune_n:
            init[rr, p_idx[go]] = float("inf")
        else:
            cptr[rr, side[go]] += 1
        active = go & (eps.abs() > update_threshold)
    return pruned


def reconstruction_error(
    weight: torch.Tensor, pruned: torch.Tensor, input_mean: torch.Tensor
) -> torch.Tensor:
    """|ε_i| per row: the mean output a mask removes, the quantity DSnoT drives toward zero."""
    return ((weight.float() * input_mean.float().reshape(1, -1)) * pruned).sum(dim=1).abs()


# ---------------------------------------------------------------- model-level entry
from reference_impls.common.hessian import inverse_hessian_cholesky  # noqa: E402
from reference_impls.common.pruning import SPARSITY_OPTIONS, nm_mask, pruned_summary, row_mask  # noqa: E402  # noqa: E402
from reference_impls.common.registry import Option, register  # noqa: E402


def initial_score(method: str, W: torch.Tensor, stats, hessian: torch.Tensor | None) -> torch.Tensor:
    """The score of the mask DSnoT starts from (the repository's three choices)."""
    if method == "magnitude":
        return W.abs()
    if method == "wanda":
        return W.abs() * stats.input_norm.reshape(1, -1)
    # SparseGPT's w²/[U]ₖₖ², mask only
    Hinv, dead = inverse_hessian_cholesky(hessian, damp=0.01, dtype=torch.float64)
    return W.masked_fill(dead.reshape(1, -1), 0) ** 2 / torch.diag(Hinv).reshape(1, -1) ** 2


@register(
    "dsnot",
    family="pruning",
    papers=["dsnot"],
    bench=[{"sparsity": 0.6}, {"prune_n": 2, "prune_m": 4}, {"sparsity": 0.6, "skip_mlp": False}],
    fidelity="simplified",
    summary="DSnoT: training-free prune-and-grow refinement of a magnitude / Wanda / SparseGPT mask",
    options={
        **SPARSITY_OPTIONS,
        "initial": Option("wanda", "initial mask", choices=("magnitude", "wanda", "sparsegpt")),
        "max_cycles": Option(50, "most swaps per row"),
        "update_threshold": Option(0.1 / 2048, "stop a row once its |mean output error| is this small"),
        "var_power": Option(1.0, "power of the input variance dividing the regrow score"),
        "skip_mlp": Option(
            True,
            "leave linears named mlp.* with their initial mask (the repository's default and its name "
            "rule: Llama/GPT-2 MLPs; OPT fc1/fc2 and BERT FFNs are still refined)",
        ),
    },
)
def run_dsnot(ctx, *, sparsity, prune_n, prune_m, initial, max_cycles, update_threshold, var_power, skip_mlp):
    pruned, formats = {}, {}
    error_ratio = []

    def process(block):
        for name in block.linears:
            stats = block.stats[name]  # layerwise.LinearStats
            W = block.weight(name)
            hessian = stats.hessian if initial == "sparsegpt" else None
            score = initial_score(initial, W, stats, hessian)
            mask = nm_mask(score, prune_n, prune_m) if prune_n else row_mask(score, sparsity)
            if not (skip_mlp and name.startswith("mlp")):
                start = reconstruction_error(W, mask, stats.act_mean).sum()
                mask = dsnot_refine(
                    W, mask, stats.act_mean, stats.act_var, stats.input_norm, initial_score=score,
                    prune_n=prune_n, prune_m=prune_m, max_cycles=max_cycles,
                    update_threshold=update_threshold, var_power=var_power,
                )  # fmt: skip
                error_ratio.append(
                    float(reconstruction_error(W, mask, stats.act_mean).sum() / start.clamp_min(1e-12))
                )
            new = W.masked_fill(mask, 0)
            block.set_weight(name, new)
            full = f"{block.name}.{name}"
            pruned[full] = new
            formats[full] = ctx.ledger.add_sparse(full, new, prune_n=prune_n, prune_m=prune_m)

    moments = ("input_norm", "act_mean", "act_var")
    ctx.walk(process, stats=moments + (("hessian",) if initial == "sparsegpt" else ()))
    out = pruned_summary(ctx, pruned, formats)
    if error_ratio:  # mean-output error after / before refinement, averaged over refined layers
        out["mean_error_ratio"] = sum(error_ratio) / len(error_ratio)
    return out
