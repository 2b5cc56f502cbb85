"""TensorGPT: "TensorGPT: Efficient Compression of Large Language Models based on Tensor-Train
Decomposition" (Xu, Xu, Mandic; arXiv 2307.00526); catalog record `tensorgpt`.

Training-free compression of the token embedding: each token's embedding vector (length d) is
reshaped into an order-N tensor (d = n_1⋯n_N) and stored as a Matrix Product State, i.e. its
tensor-train cores (TT-SVD, `tensor_train.py`). The embedding costs Σ_tokens Σ_k r_{k−1} n_k r_k
values instead of V·d, so the compression ratio is set by the reshaping and the TT ranks together.

Implemented (fidelity: exact): per-token TT-SVD of the input embedding with one maximum rank for every
bond (capped where the unfolding is smaller), the reshaping given (`--shape 4,8,8`) or the most
balanced factorization of d into `--order` factors; the embedding is replaced by the reconstruction
(the model computes with it; storage counts the cores at 16 bits). When the LM head is tied to the
embedding (the project's causal LM), it shares the compressed matrix, so the head is compressed too.
Not implemented: the paper's distributed computation and its Raspberry Pi latency study.
"""

from __future__ import annotations

import torch

from reference_impls.common.registry import Option, register
from reference_impls.low_rank.tensor_train import capped_ranks, tt_decompose_batch, tt_reconstruct_batch


def balanced_shape(d: int, order: int) -> tuple[int, ...]:
    """d as a product of `order` factors as equal as possible (primes into the smallest bin), ascending."""
    primes, m, p = [], d, 2
    while m > 1:
        while m % p == 0:
            primes.append(p)
            m //= p
        p += 1
    if len(primes) < order:
        raise ValueError(f"--order {order}: {d} has only {len(primes)} prime factors")
    bins = [1] * order
    for q in sorted(primes, reverse=True):
        bins[bins.index(min(bins))] *= q
    return tuple(sorted(bins))


def tensorgpt_compress(embedding: torch.Tensor, *, shape: tuple[int, ...],
                       rank: int) -> tuple[torch.Tensor, int]:
    """(reconstructed embedding (V, d), number of TT-core values) for per-token TT-SVD."""
    V, d = embedding.shape
    if int(torch.tensor(shape).prod()) != d:
        raise ValueError(f"--shape {','.join(map(str, shape))} does not multiply to the embedding size {d}")
    ranks = [1] + [rank] * (len(shape) - 1) + [1]
    cores = tt_decompose_batch(embedding.reshape(V, *shape), ranks=ranks)  # each (V, r, n, r)
    n_values = sum(c[0].numel() for c in cores) * V
    return tt_reconstruct_batch(cores).reshape(V, d), n_values


@register(
    "tensorgpt", family="low_rank", papers=["tensorgpt"], fidelity="exact",
    summary="Per-token tensor-train (MPS) decomposition of the token embedding",
    options={"rank": Option(4, "maximum TT rank of every bond"),
             "order": Option(3, "number of factors the embedding size is reshaped into"),
             "shape": Option("", "explicit reshaping, e.g. 4,8,8 (overrides --order)")},
    bench=[{"order": o, "rank": r} for o, r in ((2, 4), (2, 8), (3, 2), (3, 4), (3, 8), (4, 4))],
)
def run_tensorgpt(ctx, *, rank: int, order: int, shape: str) -> dict:
    if rank < 1:
        raise ValueError(f"--rank must be >= 1, got {rank}")
    emb = ctx.model.get_input_embeddings()
    V, d = emb.weight.shape
    if shape:
        try:
            dims = tuple(int(s) for s in shape.split(","))
        except ValueError:
            raise ValueError(f"--shape must be comma-separated integers, got {shape!r}") from None
    else:
        if order < 2:
            raise ValueError(f"--order must be >= 2, got {order}")
        dims = balanced_shape(d, order)
    E = emb.weight.detach().float()  # (V, d)
    W, n_values = tensorgpt_compress(E, shape=dims, rank=rank)
    rel_error = float((W - E).norm() / E.norm())
    with torch.no_grad():
        emb.weight.copy_(W.to(emb.weight.dtype))
    ctx.ledger.add("embedding", V * d, n_values * 16)
    head = ctx.model.get_output_embeddings()
    return {"tt_shape": list(dims), "tt_ranks": capped_ranks(dims, [1] + [rank] * (len(dims) - 1) + [1]),
            "tt_params": n_values, "ratio_kept": n_values / (V * d), "compression_ratio": V * d / n_values,
            "embedding_rel_error": rel_error,
            "lm_head_tied": head is not None and head.weight is emb.weight}
