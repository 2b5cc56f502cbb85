"""Palu: "Palu: Compressing KV-Cache with Low-Rank Projection" (Chang, Lin, Lin, Wu, Chen, Chen, Wang,
Wu, Abdelfattah, Luo; arXiv 2407.21118, ICLR 2025); catalog record `palu`.

The key and value projections are factored, W ≈ B A with A (r, hidden) a down-projection and B
(heads·head_dim, r) an up-projection. The cache holds the latent h = A x (r numbers per token instead of
heads·head_dim) and attention reconstructs keys B h (then applies RoPE) and values B h on the fly.

Implemented (fidelity: simplified): the group-head low-rank decomposition (G-LRD: the rows of each
group of `--group-heads` KV heads, all of them by default = joint-head J-LRD) by truncated SVD,
W_g = U Σ Vᵀ → B = U_r (orthonormal), A = Σ_r V_rᵀ, rank r = int(cache_ratio · group rows); k_proj and
v_proj are replaced by B·A (ledger: the factors at 16 bits). The cache (common/generation's `KVPolicy`)
holds only the latents: the hook receives post-RoPE keys, so the policy un-rotates them at their
positions (every position is kept), projects on Bᵀ (exact, since the low-rank keys lie in span B) and
re-rotates after reconstruction; values are projected the same way. So the cache is exactly
cache_ratio of the full one, attention is that of the low-rank model, and the cost is in the model's
perplexity (`perplexity` vs `perplexity_fp`); `next_token_kl` compares with the full cache of the same
low-rank model (≈ 0 by construction).
Not implemented: Palu's Fisher-based rank search across layers, its whitened (SVD-LLM) decomposition,
fusing B_v into o_proj, the quantization of the latents (Hadamard + low-bit) and its kernels.
"""

from __future__ import annotations

import torch

from reference_impls.common.generation import KVPolicy, _rotary, _rotate_half, measure_on_heldout
from reference_impls.common.registry import Option, register


# ---------------------------------------------------------------- pure core
def palu_decompose(weight: torch.Tensor, *, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B (rows, r) with orthonormal columns, A (r, in)) with B·A the rank-r truncated SVD of `weight`."""
    U, S, Vh = torch.linalg.svd(weight.double(), full_matrices=False)
    return U[:, :rank].to(weight.dtype), (S[:rank, None] * Vh[:rank]).to(weight.dtype)


class PaluPolicy(KVPolicy):
    """Holds per token the latents Bᵀk (pre-RoPE) and Bᵀv of every head group, nothing else."""

    def __init__(self, up: list[dict[str, list[torch.Tensor]]], rotary) -> None:
        self.up, self.rotary, self.layer = up, rotary, 0  # up[layer]["k" | "v"] = [B_g per group]

    def select(self, layer_idx, keys, values, attn):
        self.layer = layer_idx  # store/append for this layer follow right after
        return None

    def _rope(self, x: torch.Tensor, start: int, sign: float) -> torch.Tensor:
        pos = torch.arange(start, start + x.shape[2], device=x.device)[None]
        cos, sin = self.rotary(x, pos)  # (1, T, d)
        cos, sin = cos[:, None].to(x.dtype), sin[:, None].to(x.dtype)
        return x * cos + sign * _rotate_half(x) * sin  # sign −1: the inverse rotation

    def _project(self, x: torch.Tensor, kv: str) -> torch.Tensor:
        b, h, T, d = x.shape
        flat = x.transpose(1, 2).reshape(b, T, h * d)  # (b, T, heads·head_dim), head-major rows of W
        parts, i = [], 0
        for B in self.up[self.layer][kv]:
            parts.append(flat[..., i : i + B.shape[0]] @ B)  # (b, T, r_g)
            i += B.shape[0]
        return torch.cat(parts, -1)

    def _reconstruct(self, latent: torch.Tensor, kv: str, h: int) -> torch.Tensor:
        b, T, _ = latent.shape
        parts, i = [], 0
        for B in self.up[self.layer][kv]:
            parts.append(latent[..., i : i + B.shape[1]] @ B.T)
            i += B.shape[1]
        return torch.cat(parts, -1).reshape(b, T, h, -1).transpose(1, 2)  # (b, h, T, d)

    def _encode(self, keys, values, start: int) -> dict[str, torch.Tensor]:
        return {"k_latent": self._project(self._rope(keys, start, -1.0), "k"),
                "v_latent": self._project(values, "v")}

    def store(self, keys, values):
        self.heads = keys.shape[1]
        # load() runs before this step's select(), so the layer (whose B it needs) is held too: 2 bytes
        return {**self._encode(keys, values, 0), "layer": torch.tensor(self.layer, dtype=torch.int16)}

    def append(self, held, keys, values, *, n_new):
        start = keys.shape[2] - n_new
        new = self._encode(keys[:, :, start:], values[:, :, start:], start)
        return {**{n: torch.cat([held[n], new[n]], 1) for n in new}, "layer": held["layer"]}

    def load(self, held):
        self.layer = int(held["layer"])
        k = self._rope(self._reconstruct(held["k_latent"], "k", self.heads), 0, 1.0)
        return k, self._reconstruct(held["v_latent"], "v", self.heads)


# ---------------------------------------------------------------- model-level entry
@register(
    "palu", family="kv_cache", papers=["palu"], fidelity="simplified",
    summary="Low-rank k/v projections; the cache holds the latent and reconstructs keys/values at attention",
    options={"cache_ratio": Option(0.5, "latent size / (kv_heads·head_dim): the fraction of the cache kept"),
             "group_heads": Option(0, "KV heads decomposed together (0 = all: joint-head)"),
             "windows": Option(4, "held-out windows for the cache measures"),
             "prefill": Option(128, "prompt tokens"), "new_tokens": Option(128, "generated tokens")},
    bench=[{"cache_ratio": 0.5}, {"cache_ratio": 0.25}],
    bench_models=("causal",),
)
def run_palu(ctx, *, cache_ratio: float, group_heads: int, windows: int, prefill: int,
             new_tokens: int) -> dict:
    if ctx.loaded.kind != "causal":
        raise ValueError("palu needs a causal LM (--model causal)")
    policy, rank, g = palu_model(ctx.model, cache_ratio=cache_ratio, group_heads=group_heads,
                                 ledger=ctx.ledger)
    metrics = measure_on_heldout(ctx, policy, windows=windows, prefill=prefill, new_tokens=new_tokens)
    return {**metrics, "latent_rank": rank, "group_heads": g}


def palu_model(model, *, cache_ratio: float, group_heads: int = 0,
               ledger=None) -> tuple[PaluPolicy, int, int]:
    """Factor every layer's k_proj / v_proj in place; the policy that caches their latents."""
    if not 0 < cache_ratio <= 1:
        raise ValueError(f"--cache-ratio must be in (0, 1], got {cache_ratio}")
    rotary = _rotary(model)
    if rotary is None:
        raise ValueError("palu needs a rotary (Llama-style) model: keys are projected before RoPE")
    cfg = model.config
    kv_heads = cfg.num_key_value_heads
    d = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    g = group_heads or kv_heads
    if kv_heads % g:
        raise ValueError(f"--group-heads {g} must divide the {kv_heads} KV heads")
    rank = max(1, int(cache_ratio * g * d))
    up = []
    for i, layer in enumerate(model.model.layers):
        up.append({})
        for kv, proj in (("k", layer.self_attn.k_proj), ("v", layer.self_attn.v_proj)):
            W = proj.weight.detach().float()  # (kv_heads·d, hidden)
            blocks = [palu_decompose(W[j : j + g * d], rank=rank) for j in range(0, W.shape[0], g * d)]
            with torch.no_grad():
                proj.weight.copy_(torch.cat([B @ A for B, A in blocks]).to(proj.weight.dtype))
            up[i][kv] = [B for B, _ in blocks]
            if ledger is not None:
                bits = sum(16 * rank * (B.shape[0] + A.shape[1]) for B, A in blocks)
                ledger.add(f"model.layers.{i}.self_attn.{kv}_proj", W.numel(), bits)
    return PaluPolicy(up, rotary), rank, g
