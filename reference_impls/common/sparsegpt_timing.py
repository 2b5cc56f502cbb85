"""Timing SparseGPT on one 4096×4096 layer against a straightforward reading of the official loop.

The baseline, `straightforward_sparsegpt`, is written here from the structure of IST-DASLab/sparsegpt
`SparseGPT.fasterprune` (our own code, not a copy): float32 throughout, the damped Cholesky inverse and
its upper factor, blocks of 128 columns, the adaptive mask of a block from a full sort of its
w²/[U]ₖₖ² scores (threshold `<= sorted[k]`, which prunes one weight more than k), an N:M group's mask
by `topk` when the sweep reaches it, and a rank-1 update of the whole remaining block after every
column. Both get the same W and H (common.gptq_timing.calibration_hessian); each solve is timed
`repeats` times, alternating the two, and the minimum is reported (the CPU is shared). The outputs
are compared by their masks and by the layer-output error tr((W−Q)H(W−Q)ᵀ).
"""

from __future__ import annotations

import time

import torch

from reference_impls.common.gptq_timing import calibration_hessian, layer_error
from reference_impls.pruning.sparsegpt import sparsegpt_prune


def straightforward_sparsegpt(W: torch.Tensor, H: torch.Tensor, *, sparsity: float = 0.5, prunen: int = 0,
                              prunem: int = 0, blocksize: int = 128, percdamp: float = 0.01,
                              official_count: bool = True) -> torch.Tensor:
    """The official loop without further optimisation; `official_count=False` thresholds at the k-th
    smallest score instead of the (k+1)-th, so that exactly k weights per block are pruned (ours)."""
    W, H = W.clone().float(), H.clone().float()
    columns = W.shape[1]
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H.diagonal().add_(percdamp * torch.mean(torch.diag(H)))
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Losses1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        if prunen == 0:
            tmp = W1**2 / (torch.diag(Hinv1).reshape((1, -1))) ** 2
            k = int(tmp.numel() * sparsity) - (0 if official_count else 1)
            mask1 = tmp <= torch.sort(tmp.flatten())[0][k] if k >= 0 else torch.zeros_like(tmp) == 1
        else:
            mask1 = torch.zeros_like(W1) == 1
        for i in range(i2 - i1):
            w = W1[:, i]
            d = Hinv1[i, i]
            if prunen != 0 and i % prunem == 0:
                tmp = W1[:, i : i + prunem] ** 2 / (torch.diag(Hinv1)[i : i + prunem].reshape((1, -1))) ** 2
                mask1.scatter_(1, i + torch.topk(tmp, prunen, dim=1, largest=False)[1], True)
            q = w.clone()
            q[mask1[:, i]] = 0
            Q1[:, i] = q
            Losses1[:, i] = (w - q) ** 2 / d**2
            err1 = (w - q) / d
            W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err1
        W[:, i1:i2] = Q1
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    return W


def layer_timing(*, n: int = 4096, n_tokens: int = 128 * 2048, repeats: int = 3, seed: int = 0,
                 patterns: tuple[dict, ...] = ({"sparsity": 0.5}, {"prune_n": 2, "prune_m": 4}),
                 hessian: torch.Tensor | None = None) -> dict:
    """Seconds for our sparsegpt_prune and the straightforward reading on the same (n, n) problem."""
    H = calibration_hessian(n, n_tokens, seed=seed)[0] if hessian is None else hessian
    W = torch.randn(n, n, generator=torch.Generator().manual_seed(seed + 1)) * 0.02
    out = {"shape": [n, n], "calibration_tokens": n_tokens, "repeats": repeats, "patterns": []}
    for pattern in patterns:
        n_, m_ = pattern.get("prune_n", 0), pattern.get("prune_m", 0)
        sparsity = pattern.get("sparsity", 0.5)
        ours, ref = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            S_ours = sparsegpt_prune(W, H, sparsity=sparsity, prune_n=n_, prune_m=m_)
            ours.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            S_ref = straightforward_sparsegpt(W, H, sparsity=sparsity, prunen=n_, prunem=m_)
            ref.append(time.perf_counter() - t0)
        out["patterns"].append({
            **pattern, "sparsegpt_s": min(ours), "straightforward_s": min(ref), "ratio": min(ours) / min(ref),
            "all_sparsegpt_s": ours, "all_straightforward_s": ref,
            # the official threshold prunes one extra weight per adaptive block; otherwise the masks
            # agree up to float32-vs-float64 factorisation near ties
            "mask_disagreement": ((S_ours == 0) != (S_ref == 0)).float().mean().item(),
            "layer_error_sparsegpt": layer_error(W, S_ours, H),
            "layer_error_straightforward": layer_error(W, S_ref, H),
        })
    out.update(threads=torch.get_num_threads(), torch=torch.__version__,
               method="wall time of each solve given W and H; minimum over repeats, alternating")
    return out
