"""Timing GPTQ on one 4096×4096 layer with 128×2048 calibration tokens, on CPU.

The baseline is a straightforward CPU reading of the official algorithm (IST-DASLab/gptq
`fasterquant`, written here from the paper's Algorithm 1 and that code's structure): blocks of 128
columns, a rank-1 update of the whole remaining block after every column, a per-column loss, and the
same Cholesky-based inverse (`common.hessian`). Both implementations get the same W and H, so the
Hessian accumulation (one float32 GEMM over the 262,144 calibration tokens, identical in both) is
timed once and reported separately. Each solve is timed `repeats` times, alternating the two, and
the minimum is reported, because the CPU is shared; their outputs are compared so that the faster
one is known to be right.
"""

from __future__ import annotations

import time

import torch

from reference_impls.common.hessian import inverse_hessian_cholesky
from reference_impls.quantization.gptq import gptq_quantize
from reference_impls.quantization.rtn import fake_quantize, minmax_params, rtn_quantize


def layer_error(W: torch.Tensor, Q: torch.Tensor, H: torch.Tensor) -> float:
    """tr((W - Q) H (W - Q)ᵀ): the layer-output error GPTQ minimises, in float64."""
    D = (W - Q).double()
    return torch.einsum("oi,ij,oj->", D, H.double(), D).item()


def straightforward_gptq(W: torch.Tensor, H: torch.Tensor, *, bits: int, group_size: int = -1,
                         blocksize: int = 128, percdamp: float = 0.01) -> torch.Tensor:
    """Algorithm 1 as the official code lays it out, without further optimisation (asymmetric grid)."""
    W, H = W.clone().float(), H.clone().float()
    columns = W.shape[1]
    maxq = 2**bits - 1
    scale, zero = minmax_params(W, bits=bits, sym=False)
    Hinv, dead = inverse_hessian_cholesky(H, damp=percdamp)
    W[:, dead] = 0
    Losses = torch.zeros_like(W)
    Q = torch.zeros_like(W)
    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Losses1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            w = W1[:, i]
            d = Hinv1[i, i]
            if group_size != -1 and (i1 + i) % group_size == 0:
                scale, zero = minmax_params(W[:, i1 + i : i1 + i + group_size], bits=bits, sym=False)
            q = fake_quantize(w.unsqueeze(1), scale.unsqueeze(1), zero.unsqueeze(1), maxq).flatten()
            Q1[:, i] = q
            Losses1[:, i] = (w - q) ** 2 / d**2
            err1 = (w - q) / d
            W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err1
        Q[:, i1:i2] = Q1
        Losses[:, i1:i2] = Losses1 / 2
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    return Q


def calibration_hessian(
    n_in: int, n_tokens: int, *, seed: int = 0, chunk: int = 8192
) -> tuple[torch.Tensor, float]:
    """H = 2/n Σ x xᵀ over synthetic correlated activations, accumulated chunk by chunk; and its time."""
    g = torch.Generator().manual_seed(seed)
    col_scale = torch.logspace(-1, 0.5, n_in)[torch.randperm(n_in, generator=g)]  # (in,) uneven channels
    mix = torch.randn(64, n_in, generator=g) / 8  # (64, in): shared low-rank structure correlates channels
    H = torch.zeros(n_in, n_in)
    seconds = 0.0
    for start in range(0, n_tokens, chunk):
        m = min(chunk, n_tokens - start)
        x = torch.randn(m, n_in, generator=g) * col_scale + torch.randn(m, 64, generator=g) @ mix  # (m, in)
        t0 = time.perf_counter()
        H.addmm_(x.t(), x, alpha=2.0 / n_tokens)
        seconds += time.perf_counter() - t0
    return H, seconds


def layer_timing(*, n: int = 4096, n_tokens: int = 128 * 2048, bits: int = 4, group_size: int = 128,
                 repeats: int = 2, seed: int = 0) -> dict:
    """Seconds for our gptq_quantize and the straightforward reading on the same (n, n) problem."""
    H, hessian_s = calibration_hessian(n, n_tokens, seed=seed)
    W = torch.randn(n, n, generator=torch.Generator().manual_seed(seed + 1)) * 0.02
    ours, ref = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        Q_ours = gptq_quantize(W, H, bits=bits, group_size=group_size)
        ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        Q_ref = straightforward_gptq(W, H, bits=bits, group_size=group_size)
        ref.append(time.perf_counter() - t0)
    return {
        "shape": [n, n], "calibration_tokens": n_tokens, "bits": bits, "group_size": group_size,
        "hessian_accumulation_s": hessian_s, "gptq_s": min(ours), "straightforward_s": min(ref),
        "speedup": min(ref) / min(ours), "repeats": repeats, "all_gptq_s": ours, "all_straightforward_s": ref,
        # Different float32 summation orders move grid scales by ulps (every value of a group then
        # differs by ~1e-7) and can flip a rare rounding; the layer errors show both solve equally well.
        "fraction_flipped": ((Q_ours - Q_ref).abs() > 1e-5).float().mean().item(),
        "layer_error_gptq": layer_error(W, Q_ours, H),
        "layer_error_straightforward": layer_error(W, Q_ref, H),
        "layer_error_rtn": layer_error(W, rtn_quantize(W, bits=bits, group_size=group_size), H),
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "method": (
            "wall time (time.perf_counter) of each solve given W and H; minimum over repeats, alternating"
        ),
    }
