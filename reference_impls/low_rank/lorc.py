"""LoRC: Low-Rank Compensation, from "ZeroQuant-V2: Exploring Post-training Quantization in LLMs from
Comprehensive Study to Low Rank Compensation" (Yao, Wu, Li, Youn, He; arXiv 2303.08302); catalog
record `zeroquant-v2`.

A quantized (or pruned) weight Ŵ leaves an error E = W − Ŵ. LoRC stores the best rank-k
approximation of that error next to Ŵ: E ≈ Û V̂ with Û = U_k Σ_k^{1/2}, V̂ = Σ_k^{1/2} V_kᵀ from the
SVD of E, and the layer computes with Ŵ + Û V̂ (§5 of the paper; LQER later weighs E by activation
scales before the SVD, which is not done here).

Implemented (fidelity: simplified): the compensation above on a round-to-nearest base (the project's
`rtn`, the DESIGN §4 min-max grid; `--base rtn --bits --group-size`) or on a magnitude-pruned base
(`--base magnitude --sparsity`: the same SVD of the pruning error), every block linear, the factors
at 16 bits; the ledger records the base's real cost plus k·(m + n)·16. The paper's base quantizer is
GPTQ / ZeroQuant's fine-grained quantization, and it studies quantizing the factors too; neither is
done here (hence `simplified`).
"""

from __future__ import annotations

import torch

from reference_impls.common.registry import Option, register
from reference_impls.common.storage import low_rank_bits, quantized_bits
from reference_impls.pruning.magnitude import magnitude_prune
from reference_impls.quantization.rtn import rtn_quantize


# ---------------------------------------------------------------- pure core
def lorc_compensate(weight: torch.Tensor, base: torch.Tensor, *, rank: int) -> torch.Tensor:
    """Ŵ + Û V̂ with Û V̂ the rank-`rank` truncated SVD of E = W − Ŵ; same shape and dtype as `weight`."""
    E = weight.double() - base.double()  # (out, in)
    U, S, Vh = torch.linalg.svd(E, full_matrices=False)
    root = S[:rank].sqrt()
    U_hat, V_hat = U[:, :rank] * root, root[:, None] * Vh[:rank]  # (out, k), (k, in)
    return (base.double() + U_hat @ V_hat).to(weight.dtype)


# ---------------------------------------------------------------- model-level entry
@register(
    "lorc", family="low_rank", papers=["zeroquant-v2"], fidelity="simplified",
    summary="Low-rank compensation: a quantized or pruned weight + the top singular directions of its error",
    options={"rank": Option(8, "rank of the error's approximation"),
             "base": Option("rtn", "what is compensated", choices=("rtn", "magnitude")),
             "bits": Option(4, "bits of the RTN base (2-8)"),
             "group_size": Option(-1, "RTN input columns per group (-1 = whole row)"),
             "sparsity": Option(0.5, "fraction of weights the magnitude base prunes")},
    bench=[{"bits": 3, "rank": 8}, {"bits": 3, "rank": 32}, {"bits": 4, "rank": 8}, {"bits": 4, "rank": 32},
           {"base": "magnitude", "sparsity": 0.5, "rank": 32}],
)
def run_lorc(ctx, *, rank: int, base: str, bits: int, group_size: int, sparsity: float) -> dict:
    if rank < 0:
        raise ValueError(f"--rank must be >= 0, got {rank}")
    if base == "rtn" and not 2 <= bits <= 8:
        raise ValueError(f"--bits must be between 2 and 8, got {bits}")
    if base == "magnitude" and not 0 <= sparsity < 1:
        raise ValueError(f"--sparsity must be in [0, 1), got {sparsity}")
    err_before = err_after = 0.0

    def compress(name: str, w: torch.Tensor) -> torch.Tensor:
        nonlocal err_before, err_after
        m, n = w.shape
        k = min(rank, m, n)
        if base == "rtn":
            W_hat = rtn_quantize(w, bits=bits, group_size=group_size)
            base_bits = quantized_bits(m, n, bits=bits, group_size=group_size)
            ctx.ledger.add(name, m * n, base_bits + low_rank_bits(m, n, rank=k))
        else:
            W_hat = magnitude_prune(w, sparsity=sparsity)
            ctx.ledger.add_sparse(name, W_hat, extra_bits=low_rank_bits(m, n, rank=k))
        new = lorc_compensate(w, W_hat, rank=k)
        err_before += float((w - W_hat).pow(2).sum())
        err_after += float((w - new).pow(2).sum())
        return new

    ctx.map_linears(compress)
    return {"weight_error_base": err_before, "weight_error_lorc": err_after}
