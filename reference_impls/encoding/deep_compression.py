"""Deep Compression: "Deep Compression: Compressing Deep Neural Networks with Pruning, Trained
Quantization and Huffman Coding" (Han, Mao, Dally; arXiv 1510.00149, ICLR 2016); catalog record
`deep-compression`.

Three stages, each shrinking what the next one codes: (1) magnitude pruning, the survivors stored
as a sparse matrix of relative positions; (2) weight sharing: the kept weights of a layer are
clustered by k-means into 2^b shared values (linear initialisation over [min, max], the paper's best),
each weight stores a b-bit cluster index, and the centroids are fine-tuned with the gradient summed
over the weights of each cluster (§3.3, ∂L/∂C_k = Σ_{ij: I_ij = k} ∂L/∂W_ij); (3) Huffman coding of the
cluster indices and of the position gaps, whose distributions are far from uniform.

Implemented (fidelity: simplified): one-shot magnitude pruning per layer (one threshold over the
matrix), 1-D Lloyd k-means with linear initialisation, centroid fine-tuning on the causal LM's
calibration windows through a weight parametrisation W = C[I] ⊙ M (autograd gives exactly the
paper's grouped gradient; AdamW in the shared loop instead of the paper's SGD), centroids stored in
fp16, and real Huffman codes (`dahuffman`, via common/entropy) of the indices and of the gaps between
kept positions (row-major over the stored weight); the ledger records the coded bytes + code books +
centroids, and decoding the codes gives back the model's weights bit for bit (`round_trip_exact`).
Differences: the paper prunes iteratively with retraining, and stores gaps in 4/8-bit fields with
filler zeros before Huffman coding; here gaps are Huffman-coded directly (no filler). The encoder has
no training loss here, so its centroids are not fine-tuned (`finetune_steps` 0 in its results).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from reference_impls.common.entropy import HuffmanCoded, huffman_encode
from reference_impls.common.layerwise import block_linears
from reference_impls.common.registry import Option, register
from reference_impls.common.training import TrainConfig, causal_lm_loss, cycle, train

CENTROID_BITS = 16


# ---------------------------------------------------------------- pure core
def kmeans_1d(values: torch.Tensor, *, k: int, iters: int = 30) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means on scalars, linear initialisation over [min, max]; (centroids (k,), index (n,))."""
    x = values.double()
    C = torch.linspace(float(x.min()), float(x.max()), k, dtype=torch.float64)
    for _ in range(iters):
        idx = torch.bucketize(x, (C[1:] + C[:-1]) / 2)  # nearest centroid (C stays sorted)
        sums = torch.zeros(k, dtype=torch.float64).index_add_(0, idx, x)
        counts = torch.bincount(idx, minlength=k)
        new = torch.where(counts > 0, sums / counts.clamp(min=1), C)  # an empty cluster keeps its value
        if torch.equal(new, C):
            break
        C = new
    return C.float(), torch.bucketize(x, (C[1:] + C[:-1]) / 2)


def share_weights(weight: torch.Tensor, *, sparsity: float, bits: int):
    """Prune the smallest |w| (one threshold over the matrix), cluster the rest: (mask, centroids, index)."""
    w = weight.float()
    n_prune = int(sparsity * w.numel())
    mask = torch.ones_like(w, dtype=torch.bool)
    if n_prune:
        mask.view(-1)[torch.topk(w.abs().view(-1), n_prune, largest=False).indices] = False
    C, idx_kept = kmeans_1d(w[mask], k=2**bits)
    idx = torch.zeros_like(w, dtype=torch.long)
    idx[mask] = idx_kept
    return mask, C, idx


@dataclass
class CodedLayer:
    shape: tuple[int, ...]
    gaps: HuffmanCoded  # distance from the previous kept position (the first: position + 1)
    index: HuffmanCoded  # cluster index of each kept weight
    centroids: np.ndarray  # float16

    @property
    def bits(self) -> int:
        return self.gaps.bits + self.index.bits + self.centroids.size * CENTROID_BITS

    def decode(self) -> torch.Tensor:
        pos = np.cumsum(self.gaps.decode()) - 1
        flat = np.zeros(int(np.prod(self.shape)), dtype=np.float32)
        flat[pos] = self.centroids.astype(np.float32)[self.index.decode()]
        return torch.from_numpy(flat).reshape(self.shape)


def huffman_code_layer(mask: torch.Tensor, centroids: torch.Tensor, idx: torch.Tensor, *,
                       bits: int) -> CodedLayer:
    """Stage 3: Huffman codes of the position gaps and the cluster indices; centroids in fp16."""
    pos = torch.nonzero(mask.reshape(-1)).squeeze(1).numpy()
    gaps = np.diff(pos, prepend=-1)
    gap_bits = max(int(gaps.max()).bit_length(), 1) if gaps.size else 1
    return CodedLayer(tuple(mask.shape), huffman_encode(gaps, symbol_bits=gap_bits),
                      huffman_encode(idx.reshape(-1)[mask.reshape(-1)].numpy(), symbol_bits=bits),
                      centroids.to(torch.float16).numpy())


class SharedWeight(nn.Module):
    """W = C[I] ⊙ M as a parametrisation: the centroids are the trainable parameters."""

    def __init__(self, centroids: torch.Tensor, idx: torch.Tensor, mask: torch.Tensor):
        super().__init__()
        self.centroids = nn.Parameter(centroids.clone())
        self.register_buffer("idx", idx)
        self.register_buffer("mask", mask)

    def forward(self, _original: torch.Tensor) -> torch.Tensor:
        return self.centroids[self.idx] * self.mask


# ---------------------------------------------------------------- model-level entry
def _finetune(ctx, shared: dict[str, SharedWeight], cfg: TrainConfig) -> dict:
    frozen = [(p, p.requires_grad) for p in ctx.model.parameters()]
    for p, _ in frozen:
        p.requires_grad_(False)
    params = [s.centroids for s in shared.values()]
    for p in params:
        p.requires_grad_(True)
    try:
        result = train(params, causal_lm_loss(ctx.model), cycle(ctx.calibration), cfg, device=ctx.device)
    finally:
        for p, flag in frozen:
            p.requires_grad_(flag)
    return result.summary("finetune")


@register(
    "deep-compression", family="encoding", papers=["deep-compression"], fidelity="simplified",
    summary="Magnitude pruning + k-means weight sharing with centroid fine-tuning + Huffman coding",
    options={"sparsity": Option(0.5, "fraction of each linear's weights pruned"),
             "bits": Option(4, "bits of the cluster index (2^bits shared values per layer)"),
             "max_steps": Option(20, "centroid fine-tuning steps (causal LM)"),
             "time_budget": Option(0.0, "fine-tuning wall-clock limit in seconds (0 = none)"),
             "lr": Option(1e-4, "centroid learning rate")},
    bench=[{"sparsity": 0.5, "bits": 4}, {"sparsity": 0.5, "bits": 3}],
)
def run_deep_compression(ctx, *, sparsity: float, bits: int, max_steps: int, time_budget: float,
                         lr: float) -> dict:
    if not 0 <= sparsity < 1:
        raise ValueError(f"--sparsity must be in [0, 1), got {sparsity}")
    if not 1 <= bits <= 8:
        raise ValueError(f"--bits must be between 1 and 8, got {bits}")
    if max_steps < 0:
        raise ValueError(f"--max-steps must be >= 0, got {max_steps}")
    shared: dict[str, SharedWeight] = {}
    modules = dict(block_linears(ctx.model, ctx.adapter))
    for name, module in modules.items():  # the stored parameter's own layout: coding is layout-free
        mask, C, idx = share_weights(module.weight.detach(), sparsity=sparsity, bits=bits)
        shared[name] = SharedWeight(C, idx, mask)
        parametrize.register_parametrization(module, "weight", shared[name])
    metrics: dict = {"finetune_steps": 0}
    if max_steps and ctx.loaded.kind == "causal":
        cfg = TrainConfig(max_steps=max_steps, time_budget=time_budget or None, lr=lr, warmup_steps=0,
                          seed=ctx.seed, progress=False)
        metrics.update(_finetune(ctx, shared, cfg))
    exact, fixed_bits = True, 0
    for name, module in modules.items():
        s = shared[name]
        with torch.no_grad():
            s.centroids.copy_(s.centroids.half().float())  # stored in fp16: compute with those values
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
        coded = huffman_code_layer(s.mask, s.centroids.detach(), s.idx, bits=bits)
        exact &= torch.equal(coded.decode(), module.weight.detach().float())
        ctx.ledger.add(name, module.weight.numel(), coded.bits)
        fixed_bits += int(s.mask.sum()) * bits + s.mask.numel()  # indices at b bits + a 1-bit mask
    metrics.update(round_trip_exact=bool(exact), bits_before_huffman=fixed_bits / ctx.ledger.n_weights)
    return metrics
