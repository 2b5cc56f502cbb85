"""GPTVQ: The Blessing of Dimensionality for LLM Quantization.

van Baalen, Kuzmin, Koryakovskiy, Nagel, Couperus, Bastoul, Mahurin, Blankevoort, Whatmough,
arXiv 2402.15319; catalog record `gptvq`.

Vector quantization inside GPTQ's sweep: every `vq_dim` consecutive input columns are quantized together,
each row's `vq_dim`-vector replaced by the nearest centroid of a codebook of 2^(bits·vq_dim) entries, and
the rounding error of those columns is spread onto the columns not yet quantized with the same inverse-
Hessian update as GPTQ (the vector's columns do not update each other: they are rounded jointly).
A codebook is shared by `group_size` weights: `columns_per_group` columns × (group_size / columns_per_group)
rows. It is fitted when the sweep reaches the group's first column, from the weights as earlier blocks
left them, by the paper's data-aware EM: Mahalanobis initialisation (points sorted by their Mahalanobis
distance to the mean, centroids taken at evenly spaced ranks), then `kmeans_iters` weighted k-means
iterations, then the centroids are rounded to signed `codebook_bits`-bit integers per codebook.

Implemented (fidelity: simplified), with the conventions of the official code (Qualcomm-AI-research/gptvq,
`GPTQ.fasterquant`, `vq_quant.py`): U = upper Cholesky factor of the damped H⁻¹, dead inputs as GPTQ;
with `hessian_weighted` the k-means of a group weights each coordinate by diag(U) of its column, while
the nearest-centroid look-up during the sweep weights it by 1/diag(U) (both as the official code does);
codebooks rounded after k-means (not during). Not implemented: the codebook update after the sweep
(25 Adam steps on the layer's quadratic loss, the paper's "M-step"), blockwise data normalisation, SVD
compression of codebooks, k-means++ initialisation, act-order (unsupported by the official code too).
Storage: bits·vq_dim index bits per vector plus every codebook at `codebook_bits` bits per coordinate.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from reference_impls.common.hessian import add_damping, inverse_upper_cholesky, mark_dead_inputs
from reference_impls.common.registry import Option, register

# (points (G, N, D), weights (1, N, D) or None, n_centroids) -> centroids (G, K, D)
FitCodebook = Callable[[torch.Tensor, torch.Tensor | None, int], torch.Tensor]


@dataclass
class GPTVQResult:
    weight: torch.Tensor  # de-quantized, (out, in)
    codebooks: list[torch.Tensor]  # one (G, K, D) per column group, G codebooks down the rows
    codes: torch.Tensor  # (out, in // D) centroid index of each row's vector
    loss: float  # Σ ‖(w − q) / diag(U)‖² / 2 over the sweep, GPTQ's error estimate


def assign(X: torch.Tensor, C: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Nearest centroid of every point: X (G, N, D), C (G, K, D), weights (1, N, D) or None → (G, N)."""
    dist = (X.unsqueeze(2) - C.unsqueeze(1)).pow(2)  # (G, N, K, D)
    if weights is not None:
        dist = dist * weights.unsqueeze(2)
    return dist.sum(-1).argmin(-1)


def weighted_means(X: torch.Tensor, idx: torch.Tensor, k: int, weights: torch.Tensor | None) -> torch.Tensor:
    """M-step: per centroid and coordinate, the weighted mean of its points, Σ w·x / Σ w → (G, K, D).
    A centroid without points moves to 0, as in the official code's normalisation."""
    onehot = torch.nn.functional.one_hot(idx, k).to(X.dtype)  # (G, N, K)
    w = torch.ones_like(X[:1]) if weights is None else weights  # (1, N, D)
    num = torch.einsum("gnk,gnd->gkd", onehot, X * w)
    den = torch.einsum("gnk,nd->gkd", onehot, w[0])
    return num / den.clamp_min(1e-10)


def mahalanobis_init(X: torch.Tensor, k: int) -> torch.Tensor:
    """Centroids at k evenly spaced ranks of the points' Mahalanobis distance to their mean (G, K, D)."""
    Xc = X - X.mean(1, keepdim=True)
    Sigma = Xc.transpose(1, 2) @ Xc  # (G, D, D)
    dist = ((Xc @ torch.linalg.pinv(Sigma)) * Xc).sum(-1)  # (G, N)
    ranks = torch.round(torch.linspace(0, X.shape[1] - 1, k)).long()
    idx = torch.argsort(dist, dim=1)[:, ranks]  # (G, K)
    return torch.gather(X, 1, idx.unsqueeze(-1).expand(-1, -1, X.shape[-1])).clone()


def round_codebook(C: torch.Tensor, bits: int) -> torch.Tensor:
    """Each codebook's centroids on a symmetric signed `bits`-bit grid scaled to its largest |value|."""
    flat = C.flatten(1)
    imax = 2 ** (bits - 1) - 1
    scale = flat.abs().amax(1, keepdim=True).clamp_min(1e-12) / imax
    return (torch.clamp(torch.round(flat / scale), -imax - 1, imax) * scale).view_as(C)


def em_codebook(iters: int, codebook_bits: int | None) -> FitCodebook:
    """The paper's data-aware EM: Mahalanobis initialisation, weighted k-means, integer codebooks."""
    def fit(X: torch.Tensor, weights: torch.Tensor | None, k: int) -> torch.Tensor:
        C = mahalanobis_init(X, k)
        for _ in range(iters):
            C = weighted_means(X, assign(X, C, weights), k, weights)
        return C if codebook_bits is None else round_codebook(C, codebook_bits)
    return fit


def gptvq(weight: torch.Tensor, hessian: torch.Tensor, *, bits: int = 2, vq_dim: int = 2,
          columns_per_group: int = 128, group_size: int = 2048, block_size: int = 128, damp: float = 0.01,
          hessian_weighted: bool = True, fit: FitCodebook | None = None) -> GPTVQResult:
    """GPTQ's sweep with `vq_dim`-dimensional vector quantization (module docstring). `fit` replaces the
    codebook fit (default: em_codebook(10, 8)); `bits` are bits per dimension: K = 2^(bits·vq_dim)."""
    fit = fit or em_codebook(10, 8)
    W = weight.to(torch.promote_types(weight.dtype, torch.float32)).clone()  # (out, in)
    H = hessian.to(W.dtype).clone()
    n_out, n_in = W.shape
    D, k, gc = vq_dim, 2 ** (bits * vq_dim), columns_per_group
    rows = group_size // gc  # rows sharing one codebook
    if gc % D or block_size % gc or n_in % gc or group_size % gc or rows < 1 or n_out % rows:
        raise ValueError(f"GPTVQ needs vq_dim | columns_per_group | block_size, columns_per_group | in "
                         f"features and group_size / columns_per_group | out features; got vq_dim {D}, "
                         f"columns {gc}, block {block_size}, group {group_size}, weight {n_out}x{n_in}")
    W[:, mark_dead_inputs(H)] = 0
    add_damping(H, damp)
    U = inverse_upper_cholesky(H)  # (in, in)
    d_all = torch.diag(U)

    Q, codes = torch.zeros_like(W), torch.zeros(n_out, n_in // D, dtype=torch.long, device=W.device)
    codebooks, loss = [], 0.0
    for i1 in range(0, n_in, block_size):
        i2 = min(i1 + block_size, n_in)
        W1, Err1, U1 = W[:, i1:i2].clone(), torch.zeros_like(W[:, i1:i2]), U[i1:i2, i1:i2]
        for i in range(0, i2 - i1, D):
            col = i1 + i
            if col % gc == 0:  # a new group: fit its codebooks on W as earlier blocks left it
                X = W[:, col:col + gc].reshape(n_out // rows, -1, D)  # (G, rows·gc/D, D), row-major
                cw = d_all[col:col + gc].reshape(1, -1, D).tile(1, rows, 1) if hessian_weighted else None
                C = fit(X, cw, k)  # (G, K, D)
                codebooks.append(C)
            d = torch.diag(U1)[i:i + D]  # (D,)
            w = W1[:, i:i + D]  # (out, D)
            lookup = (1.0 / d).expand(1, rows, D) if hessian_weighted else None
            idx = assign(w.reshape(n_out // rows, rows, D), C, lookup)  # (G, rows)
            q = torch.gather(C, 1, idx.unsqueeze(-1).expand(-1, -1, D)).reshape(n_out, D)
            Q[:, col:col + D], codes[:, col // D] = q, idx.reshape(n_out)
            err = (w - q) / d  # (out, D)
            loss += float(err.pow(2).sum()) / 2
            W1[:, i + D:] -= err @ U1[i:i + D, i + D:]  # the vector's columns are rounded jointly
            Err1[:, i:i + D] = err
        W[:, i2:] -= Err1 @ U[i1:i2, i2:]  # the lazy batch update of later blocks
    return GPTVQResult(weight=Q.to(weight.dtype), codebooks=codebooks, codes=codes, loss=loss)


def gptvq_bits(n_out: int, n_in: int, *, bits: int, vq_dim: int, group_size: int, codebook_bits: int) -> int:
    """Stored bits of one matrix: an index of bits·vq_dim bits per vector plus every codebook."""
    n = n_out * n_in
    n_codebooks = n // group_size
    return n // vq_dim * bits * vq_dim + n_codebooks * 2 ** (bits * vq_dim) * vq_dim * codebook_bits


# ---------------------------------------------------------------- model-level entry
@register(
    "gptvq", family="quantization", papers=["gptvq"], fidelity="simplified",
    summary="GPTQ's sweep with 2-D vector quantization: EM-fitted integer codebooks per weight group",
    options={
        "bits": Option(2, "bits per dimension: codebooks of 2^(bits·vq_dim) centroids (1-4)"),
        "vq_dim": Option(2, "columns quantized together as one vector (1, 2 or 4)"),
        "group_size": Option(2048, "weights sharing one codebook (columns_per_group × rows)"),
        "columns_per_group": Option(128, "input columns a codebook spans"),
        "codebook_bits": Option(8, "bits per codebook coordinate (signed integer grid per codebook)"),
        "kmeans_iters": Option(10, "weighted k-means iterations after the Mahalanobis initialisation"),
        "hessian_weighted": Option(True, "weight k-means and look-ups by the inverse Hessian's diagonal"),
        "damp": Option(0.01, "dampening, as a fraction of mean diag(H)"),
    },
    bench=[{"bits": 2, "group_size": 2048}, {"bits": 3, "group_size": 4096}],
    bench_models=("causal",),
)
def run_gptvq(ctx, *, bits, vq_dim, group_size, columns_per_group, codebook_bits, kmeans_iters,
              hessian_weighted, damp) -> dict:
    if not 1 <= bits <= 4 or vq_dim not in (1, 2, 4) or bits * vq_dim > 8:
        raise ValueError(f"--bits must be 1-4 and --vq-dim 1, 2 or 4 with bits·vq_dim <= 8, "
                         f"got {bits} and {vq_dim}")
    if columns_per_group < 1 or group_size % columns_per_group or not 2 <= codebook_bits <= 16:
        raise ValueError("--group-size must be a multiple of --columns-per-group, --codebook-bits 2-16")
    fit = em_codebook(kmeans_iters, codebook_bits)

    def process(block) -> None:
        for name in block.linears:
            w = block.weight(name)
            res = gptvq(w, block.stats[name].hessian, bits=bits, vq_dim=vq_dim, group_size=group_size,
                        columns_per_group=columns_per_group, hessian_weighted=hessian_weighted, damp=damp,
                        block_size=math.lcm(128, columns_per_group), fit=fit)
            block.set_weight(name, res.weight)
            ctx.ledger.add(f"{block.name}.{name}", w.numel(),
                           gptvq_bits(*w.shape, bits=bits, vq_dim=vq_dim, group_size=group_size,
                                      codebook_bits=codebook_bits))

    ctx.walk(process, stats=("hessian",))
    return {"centroids": 2 ** (bits * vq_dim)}
