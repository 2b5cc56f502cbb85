"""RIA: "Plug-and-Play: An Efficient Post-training Pruning Method for Large Language Models"
(Zhang, Zhao, Lin, Cao, Li, Zhang, Shi; ICLR 2024; OpenReview Tr0lPx9woF, no arXiv version).

Implemented: Relative Importance and Activations, RIA_ij = (|W_ij|/Σ_k|W_kj| + |W_ij|/Σ_k|W_ik|) ·
‖X_j‖₂^a (a = 0.5), with one threshold over the matrix for unstructured pruning (the repository's
default; `per_row=True` compares within rows as Wanda does) and N:M masks; channel permutation for
N:M: the heuristic reallocation (input channels sorted by total score and dealt round-robin into the
M-groups, every other round reversed) refined by linear sum assignment, position by position,
of which channel each group receives (the repository's `--reallocation --lsa`, solved with
`scipy.optimize.linear_sum_assignment` on blocks of at most `lsa_block` groups, as its `--fast`
option does). The mask is N:M in the permuted order; the returned weight is in the original order
and `ria_mask` returns the permutation, which a deployment folds into the previous layer or gathers.
Not implemented: the optional SparseGPT-style reconstruction and the cuSPARSELt kernels.
Fidelity: exact for the score and the masks; the LSA's block partition is ours.
"""

from __future__ import annotations

import torch

from reference_impls.common.pruning import check_nm, nm_mask, select_mask


def ria_score(weight: torch.Tensor, input_norm: torch.Tensor, *, a: float = 0.5) -> torch.Tensor:
    Wa = weight.detach().float().abs()  # (out, in)
    relative = Wa / Wa.sum(dim=0, keepdim=True) + Wa / Wa.sum(dim=1, keepdim=True)
    return relative * input_norm.float().reshape(1, -1) ** a


def retained_score(score: torch.Tensor, prune_n: int, prune_m: int) -> float:
    """Total score an N:M mask keeps, the objective the permutation maximizes."""
    return float(score.masked_fill(nm_mask(score, prune_n, prune_m), 0).sum())


def heuristic_permutation(score: torch.Tensor, prune_m: int) -> torch.Tensor:
    """Deal channels sorted by total score into groups so each group mixes strong and weak ones."""
    cols = score.shape[1]
    order = torch.sort(score.sum(dim=0)).indices  # ascending total importance
    perm = torch.empty_like(order)
    chunk = cols // prune_m
    for p in range(prune_m):
        part = order[p * chunk : (p + 1) * chunk]
        perm[p::prune_m] = part if p % 2 == 0 else part.flip(0)
    return perm


def _lsa_position(score: torch.Tensor, prune_n: int, prune_m: int, position: int) -> torch.Tensor:
    """Best reassignment of the channels at `position` among the groups of `score` (rows, G·M)."""
    from scipy.optimize import linear_sum_assignment

    rows, cols = score.shape
    G = cols // prune_m
    blocks = score.reshape(rows, G, prune_m)  # (rows, G, M)
    others = torch.cat([blocks[:, :, :position], blocks[:, :, position + 1 :]], dim=2)  # (rows, G, M-1)
    moving = blocks[:, :, position]  # (rows, G): candidate channel of each donor group
    keep = prune_m - prune_n
    # Top-k sum of a group's M-1 fixed channels plus candidate c = S_k(fixed) + max(0, c - f_k), with
    # f_k the k-th largest fixed value: c enters the kept set only by displacing f_k.
    top = others.sort(dim=2, descending=True).values  # (rows, G, M-1)
    base = top[..., :keep].sum(dim=(0, 2))  # (G,)
    f_k = top[..., keep - 1]  # (rows, G)
    value = torch.empty(G, G)
    step = max(1, 2**22 // max(1, rows * G))
    for g0 in range(0, G, step):  # value[g, b]: what group g keeps if it receives donor b's channel
        g1 = min(G, g0 + step)
        gain = (moving.unsqueeze(1) - f_k[:, g0:g1].unsqueeze(2)).clamp_min(0)  # (rows, g, G)
        value[g0:g1] = base[g0:g1].unsqueeze(1) + gain.sum(dim=0)
    _, donor = linear_sum_assignment(value.double().numpy(), maximize=True)
    local = torch.arange(cols)
    local[torch.arange(G) * prune_m + position] = torch.as_tensor(donor) * prune_m + position
    return local


def lsa_refine(
    score: torch.Tensor, perm: torch.Tensor, prune_n: int, prune_m: int, lsa_block: int
) -> torch.Tensor:
    perm = perm.clone()
    span = lsa_block * prune_m
    for position in range(prune_m):
        for start in range(0, perm.numel(), span):
            idx = perm[start : start + span]
            perm[start : start + span] = idx[_lsa_position(score[:, idx], prune_n, prune_m, position)]
    return perm


def ria_mask(
    weight: torch.Tensor,
    input_norm: torch.Tensor,
    *,
    sparsity: float = 0.5,
    prune_n: int = 0,
    prune_m: int = 0,
    a: float = 0.5,
    per_row: bool = False,
    permute: bool = True,
    lsa: bool = True,
    lsa_block: int = 64,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(pruned mask in the original column order, input permutation or None)."""
    score = ria_score(weight, input_norm, a=a)
    if not (prune_n and permute):
        return select_mask(score, sparsity, prune_n, prune_m, per_row=per_row), None
    check_nm(prune_n, prune_m, score.shape[1])
    perm = heuristic_permutation(score, prune_m)
    if lsa:
        perm = lsa_refine(score, perm, prune_n, prune_m, lsa_block)
    pruned = torch.empty_like(score, dtype=torch.bool)
    pruned[:, perm] = nm_mask(score[:, perm], prune_n, prune_m)
    return pruned, perm


def ria_prune(
    weight: torch.Tensor,
    input_norm: torch.Tensor,
    *,
    sparsity: float = 0.5,
    prune_n: int = 0,
    prune_m: int = 0,
    a: float = 0.5,
    per_row: bool = False,
    permute: bool = True,
) -> torch.Tensor:
    """Return a copy of `weight` (out, in) with the lowest-RIA entries set to zero."""
    pruned, _ = ria_mask(
        weight,
        input_norm,
        sparsity=sparsity,
        prune_n=prune_n,
        prune_m=prune_m,
        a=a,
        per_row=per_row,
        permute=permute,
    )
    return weight.masked_fill(pruned, 0)


# ---------------------------------------------------------------- model-level entry
from reference_impls.common.pruning import SPARSITY_OPTIONS, pruned_summary  # noqa: E402
from reference_impls.common.registry import Option, register  # noqa: E402


@register(
    "ria",
    family="pruning",
    papers=["ria"],
    bench=[{"sparsity": 0.5}, {"prune_n": 2, "prune_m": 4}, {"prune_n": 2, "prune_m": 4, "permute": False}],
    fidelity="exact",
    summary="RIA: relative importance × activation^a; N:M with channel permutation (heuristic + LSA)",
    options={
        **SPARSITY_OPTIONS,
        "a": Option(0.5, "exponent of the input activation norm"),
        "per_row": Option(False, "compare scores within output rows instead of over the matrix"),
        "permute": Option(True, "N:M only: permute input channels before choosing the N:M mask"),
        "lsa": Option(True, "refine the permutation by linear sum assignment"),
    },
)
def run_ria(ctx, *, sparsity, prune_n, prune_m, a, per_row, permute, lsa) -> dict:
    pruned, formats = {}, {}
    gain = []

    def process(block):
        for name in block.linears:
            W = block.weight(name)
            mask, perm = ria_mask(
                W, block.stats[name].input_norm, sparsity=sparsity, prune_n=prune_n, prune_m=prune_m,
                a=a, per_row=per_row, permute=permute, lsa=lsa,
            )  # fmt: skip
            new = W.masked_fill(mask, 0)
            block.set_weight(name, new)
            full = f"{block.name}.{name}"
            pruned[full] = new
            formats[full] = ctx.ledger.add_sparse(full, new, prune_n=prune_n, prune_m=prune_m, perm=perm)
            if perm is not None:
                score = ria_score(W, block.stats[name].input_norm, a=a)
                kept = float(score.masked_fill(mask, 0).sum())
                gain.append(kept / retained_score(score, prune_n, prune_m))

    ctx.walk(process, stats=("input_norm",))
    out = pruned_summary(ctx, pruned, formats)
    if gain:  # how much more RIA score the permuted N:M masks keep than the unpermuted ones
        out["permutation_score_gain"] = sum(gain) / len(gain)
    return out
