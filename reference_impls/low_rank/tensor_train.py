"""Tensor-train (TT) decomposition, the core of TensorGPT (DESIGN §6 conventions, as in tensorly).

"Tensor-Train Decomposition" (Oseledets, SIAM J. Sci. Comput. 2011), Algorithm 1 (TT-SVD): a tensor
of shape (n_1, …, n_d) becomes d cores G_k of shape (r_{k−1}, n_k, r_k), r_0 = r_d = 1, with
T[i_1, …, i_d] = G_1[:, i_1, :] · G_2[:, i_2, :] ⋯ G_d[:, i_d, :]. The sweep goes left to right:
unfold the remainder to (r_{k−1}·n_k, rest), keep the top r_k singular triplets, the left vectors are
core k and Σ Vᵀ carries on. A rank larger than the unfolding allows is capped at min(rows, cols) (as
`tensorly.decomposition.tensor_train` does), so full ranks reconstruct exactly. Parameter count
Σ_k r_{k−1} n_k r_k. The sweep is written for a batch of tensors at once (TensorGPT decomposes every
token embedding separately); `tt_decompose` / `tt_reconstruct` are the single-tensor API.
"""

from __future__ import annotations

import math

import torch


def capped_ranks(shape: tuple[int, ...], ranks: list[int]) -> list[int]:
    """The ranks TT-SVD actually uses: r_k ≤ min(r_{k−1}·n_k, Π_{j>k} n_j)."""
    if len(ranks) != len(shape) + 1 or ranks[0] != 1 or ranks[-1] != 1:
        raise ValueError(f"ranks must be [1, r_1, ..., r_{{d-1}}, 1] with d = {len(shape)}, got {ranks}")
    if any(r < 1 for r in ranks):
        raise ValueError(f"TT ranks must be positive, got {ranks}")
    out = [1]
    for k in range(len(shape) - 1):
        out.append(min(ranks[k + 1], out[-1] * shape[k], math.prod(shape[k + 1 :])))
    return out + [1]


def tt_params(shape: tuple[int, ...], ranks: list[int]) -> int:
    """Σ_k r_{k−1} n_k r_k, with the capped ranks."""
    r = capped_ranks(shape, ranks)
    return sum(r[k] * n * r[k + 1] for k, n in enumerate(shape))


def tt_decompose_batch(x: torch.Tensor, *, ranks: list[int]) -> list[torch.Tensor]:
    """TT-SVD of each x[b] (x: (B, n_1, …, n_d)); cores (B, r_{k−1}, n_k, r_k)."""
    B, shape = x.shape[0], tuple(x.shape[1:])
    r = capped_ranks(shape, ranks)
    C = x.double().reshape(B, -1)
    cores = []
    for k, n_k in enumerate(shape[:-1]):
        C = C.reshape(B, r[k] * n_k, -1)  # unfolding (B, r_{k−1}·n_k, rest)
        U, S, Vh = torch.linalg.svd(C, full_matrices=False)
        cores.append(U[:, :, : r[k + 1]].reshape(B, r[k], n_k, r[k + 1]))
        C = S[:, : r[k + 1], None] * Vh[:, : r[k + 1]]  # Σ_k V_kᵀ carries on, (B, r_k, rest)
    cores.append(C.reshape(B, r[-2], shape[-1], 1))
    return [c.to(x.dtype) for c in cores]


def tt_reconstruct_batch(cores: list[torch.Tensor]) -> torch.Tensor:
    """(B, n_1, …, n_d) from batched cores (B, r_{k−1}, n_k, r_k)."""
    B = cores[0].shape[0]
    T = cores[0].reshape(B, -1, cores[0].shape[-1])  # (B, n_1, r_1)
    for G in cores[1:]:
        T = T @ G.reshape(B, G.shape[1], -1)  # (B, n_1⋯n_k, n_{k+1}·r_{k+1})
        T = T.reshape(B, -1, G.shape[-1])
    return T.reshape(B, *[G.shape[2] for G in cores])


def tt_decompose(tensor: torch.Tensor, *, ranks: list[int]) -> list[torch.Tensor]:
    """TT-SVD of `tensor` (n_1, …, n_d): cores of shape (r_{k−1}, n_k, r_k); `ranks` = [1, r_1, …, 1]."""
    return [c[0] for c in tt_decompose_batch(tensor[None], ranks=ranks)]


def tt_reconstruct(cores: list[torch.Tensor]) -> torch.Tensor:
    """The full tensor (n_1, …, n_d) of a list of cores (r_{k−1}, n_k, r_k)."""
    return tt_reconstruct_batch([c[None] for c in cores])[0]
