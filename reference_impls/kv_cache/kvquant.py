"""KVQuant: "KVQuant: Towards 10 Million Context Length LLM Inference with KV Cache Quantization" (Hooper,
Kim, Mohammadzadeh, Mahoney, Shao, Keutzer, Gholami; arXiv 2401.18079, NeurIPS 2024); record `kvquant`.

Four ideas, all here in their defining form:
- **per-channel keys, pre-RoPE**: keys are quantized per channel, *before* the rotary embedding, whose
  rotation mixes channel pairs and smears the outlier channels. The cache hook receives post-RoPE keys,
  so the policy un-rotates them with their positions (all positions are kept, so a key's index is its
  position), quantizes, and re-rotates after decoding: the same numbers as hooking `k_proj`'s output,
  without patching the attention module, and it is what the official kernels do (RoPE applied on the
  fly after dequantization). Per-channel ranges are fixed offline from calibration, so each new key is
  quantized on arrival (no full-precision window, unlike KIVI).
- **nuqX, a per-layer non-uniform datatype**: 2^bits centroids from a 1-D k-means on the calibration
  activations normalised to [−1, 1], weighted by their sensitivity (the Fisher information: the squared
  gradient of the language-model loss with respect to each activation), one codebook for the keys and one
  for the values of each layer; a value is stored as the index of its nearest centroid.
- **dense-and-sparse**: per vector, the elements outside thresholds set at the `outlier_frac`/2 lower
  and upper quantiles stay in float16, held sparsely (int32 token-major position + float16 value); the
  rest are normalised by the thresholds (offset = mid-point, scale = half-range) and quantized. Keys:
  per-channel thresholds from calibration (SqueezeAILab/KVQuant's `get_outliers` with offline
  thresholds); values: per-token thresholds computed online over the token's value vector (all KV heads
  of the layer; with 64 numbers per token, the 0.5% quantiles leave the largest and smallest out, 3%).
- **attention-sink-aware**: the first token is kept in full precision (`first_few_fp16`).

Held per layer: packed b-bit codes, the sparse outliers, per-token float16 value thresholds, the sink
token, and the layer's codebooks and key thresholds (float16; constants, counted anyway).
Fidelity `simplified`. Not implemented: the Q-Norm per-vector normalisation of the centroids, the
official centroid initialisation and sklearn k-means (Lloyd iterations from quantile starts here),
blocked CSR/CSC outlier storage and the custom kernels (so tokens/s measures decode-then-attend),
parallel topK for value outliers, and the long-context experiments (LWM, 1M-10M tokens).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from reference_impls.common.generation import KVPolicy, _rotary, _rotate_half, measure_on_heldout
from reference_impls.common.kv_codes import pack_codes, unpack_codes
from reference_impls.common.registry import Option, register


# ---------------------------------------------------------------- pure cores
def weighted_kmeans_1d(x: torch.Tensor, weight: torch.Tensor, *, k: int, iters: int = 40) -> torch.Tensor:
    """Sorted k centroids minimising Σ wᵢ (xᵢ − c(xᵢ))², Lloyd iterations from the k quantile mid-points."""
    c = torch.quantile(x, (torch.arange(k, dtype=x.dtype) + 0.5) / k)
    for _ in range(iters):
        assign = (x[:, None] - c[None]).abs().argmin(1)  # (n,)
        mass = torch.zeros(k).index_add_(0, assign, weight)
        total = torch.zeros(k).index_add_(0, assign, weight * x)
        c = torch.where(mass > 0, total / mass.clamp_min(1e-30), c)
    return c.sort().values


def nuq_quantize(x: torch.Tensor, *, centroids: torch.Tensor, lower: torch.Tensor,
                 upper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense-and-sparse non-uniform codes: x, lower, upper broadcastable.

    Elements outside [lower, upper] are outliers (kept apart); the rest are normalised to [−1, 1] by
    offset (upper + lower)/2 and scale (upper − lower)/2 and coded as their nearest centroid.
    Returns codes uint8 (shape of x) and the outlier mask.
    """
    offset, half = (upper + lower) / 2, ((upper - lower) / 2).clamp_min(1e-8)
    z = (x - offset) / half
    codes = (z.unsqueeze(-1) - centroids).abs().argmin(-1).to(torch.uint8)
    return codes, (x > upper) | (x < lower)


def nuq_dequantize(codes, *, centroids, lower, upper, x_outliers=None, outliers=None) -> torch.Tensor:
    offset, half = (upper + lower) / 2, ((upper - lower) / 2).clamp_min(1e-8)
    x = centroids[codes.long()] * half + offset
    return x if outliers is None else torch.where(outliers, x_outliers, x)


def kvquant_quantize(x: torch.Tensor, *, centroids, lower, upper) -> torch.Tensor:
    """Quantize-dequantize with float16 outliers: the whole of KVQuant's per-element rule (float32 out)."""
    codes, out = nuq_quantize(x.float(), centroids=centroids, lower=lower, upper=upper)
    return nuq_dequantize(codes, centroids=centroids, lower=lower, upper=upper,
                          x_outliers=x.half().float(), outliers=out)


def token_thresholds(v: torch.Tensor, frac: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token value thresholds: v (b, h, T, d) → lower/upper (b, 1, T, 1), quantiles over (h, d)."""
    flat = v.float().permute(0, 2, 1, 3).flatten(2)  # (b, T, h·d)
    lo = torch.quantile(flat, frac / 2, dim=-1)
    hi = torch.quantile(flat, 1 - frac / 2, dim=-1)
    return lo[:, None, :, None], hi[:, None, :, None]


# ---------------------------------------------------------------- calibration
@dataclass
class LayerCalibration:
    k_centroids: torch.Tensor  # (2^bits,) in [−1, 1]
    v_centroids: torch.Tensor
    k_lower: torch.Tensor  # (kv_heads, 1, head_dim): per-channel thresholds
    k_upper: torch.Tensor


def capture_pre_rope(model, batches) -> list[dict[str, torch.Tensor]]:
    """Per layer: pre-RoPE keys and values (n_tokens, kv_heads, head_dim) and their squared gradients."""
    cfg = model.config
    layers = model.model.layers
    heads, d = cfg.num_key_value_heads, cfg.hidden_size // cfg.num_attention_heads
    d = getattr(cfg, "head_dim", None) or d
    leaves: dict[tuple[int, str], list[torch.Tensor]] = {}

    def hook(i, name):
        def fn(module, args, out):
            leaf = out.detach().requires_grad_()  # the gradient of the loss w.r.t. this activation
            leaves.setdefault((i, name), []).append(leaf)
            return leaf
        return fn

    handles = [getattr(layer.self_attn, f"{n}_proj").register_forward_hook(hook(i, n))
               for i, layer in enumerate(layers) for n in ("k", "v")]
    try:
        for batch in batches:
            ids = batch["input_ids"]
            model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
    finally:
        for h in handles:
            h.remove()
    out = []
    for i in range(len(layers)):
        rec = {}
        for n in ("k", "v"):
            acts = torch.cat([t.detach().reshape(-1, heads, d) for t in leaves[(i, n)]])
            grads = torch.cat([t.grad.reshape(-1, heads, d) for t in leaves[(i, n)]])
            rec[n], rec[f"f{n}"] = acts.float(), grads.float().pow(2)
        out.append(rec)
    return out


def calibrate_layer(rec: dict[str, torch.Tensor], *, bits: int, outlier_frac: float,
                    max_points: int = 200_000, seed: int = 0) -> LayerCalibration:
    k, v = rec["k"], rec["v"]  # (n, heads, d)
    k_lower = torch.quantile(k, outlier_frac / 2, dim=0).unsqueeze(1)  # (heads, 1, d)
    k_upper = torch.quantile(k, 1 - outlier_frac / 2, dim=0).unsqueeze(1)
    g = torch.Generator().manual_seed(seed)

    def codebook(x, fisher, lower, upper):
        z = (x - (upper + lower) / 2) / ((upper - lower) / 2).clamp_min(1e-8)
        keep = z.abs() <= 1  # outliers are not quantized, so they do not shape the codebook
        z, w = z[keep], fisher[keep]
        pick = torch.randperm(z.numel(), generator=g)[:max_points]
        return weighted_kmeans_1d(z[pick], w[pick] + 1e-12, k=2**bits)

    kc = codebook(k, rec["fk"], k_lower.squeeze(1), k_upper.squeeze(1))
    v_tok = v.unsqueeze(0).transpose(1, 2)  # (1, heads, n, d) for the per-token thresholds
    v_lo, v_hi = token_thresholds(v_tok, outlier_frac)
    vc = codebook(v_tok, rec["fv"].unsqueeze(0).transpose(1, 2), v_lo, v_hi)
    return LayerCalibration(kc, vc, k_lower, k_upper)


# ---------------------------------------------------------------- the cache policy
class KVQuantPolicy(KVPolicy):
    """Pre-RoPE nuq keys, per-token nuq values, float16 sparse outliers, a full-precision sink."""

    def __init__(self, calib: list[LayerCalibration], rotary, *, bits: int, outlier_frac: float,
                 n_sink: int = 1) -> None:
        # the cache holds codebooks and thresholds in float16: encode with exactly what decodes
        self.calib = [LayerCalibration(*(t.half().float() for t in (c.k_centroids, c.v_centroids,
                                                                     c.k_lower, c.k_upper))) for c in calib]
        self.rotary, self.bits = rotary, bits
        self.frac, self.n_sink, self.layer = outlier_frac, n_sink, 0

    def select(self, layer_idx, keys, values, attn):
        self.layer = layer_idx  # PolicyLayer.compress calls store/append for this layer right after
        return None

    def _rope(self, keys: torch.Tensor, start: int, sign: float) -> torch.Tensor:
        pos = torch.arange(start, start + keys.shape[2], device=keys.device)[None]
        cos, sin = self.rotary(keys, pos)  # (1, T, d)
        cos, sin = cos[:, None].to(keys.dtype), sin[:, None].to(keys.dtype)
        return keys * cos + sign * _rotate_half(keys) * sin  # sign −1: the inverse rotation

    def _encode(self, keys, values, start: int) -> dict[str, torch.Tensor]:
        """Keys/values (b, h, n, d) at positions start…start+n−1, none of them sink tokens."""
        c = self.calib[self.layer]
        k = self._rope(keys.float(), start, -1.0)  # pre-RoPE keys
        kq, k_out = nuq_quantize(k, centroids=c.k_centroids, lower=c.k_lower, upper=c.k_upper)
        v_lo, v_hi = token_thresholds(values, self.frac)
        v_lo, v_hi = v_lo.half().float(), v_hi.half().float()  # what is stored
        vq, v_out = nuq_quantize(values.float(), centroids=c.v_centroids, lower=v_lo, upper=v_hi)
        held = {"k_codes": pack_codes(kq, self.bits), "v_codes": pack_codes(vq, self.bits),
                "v_lower": v_lo.half().flatten(), "v_upper": v_hi.half().flatten()}  # (b·n,)
        for name, x, out in (("k", k, k_out), ("v", values, v_out)):
            tm = x.permute(2, 0, 1, 3).flatten()  # token-major, so appended tokens append indices
            idx = out.permute(2, 0, 1, 3).flatten().nonzero().squeeze(1)
            held[f"{name}_out_idx"] = idx.to(torch.int32)
            held[f"{name}_out_val"] = tm[idx].half()
        return held

    def store(self, keys, values):
        self.head_dim, self.dtype = keys.shape[-1], keys.dtype
        c = self.calib[self.layer]
        s = min(self.n_sink, keys.shape[2])
        held = {"k_sink": keys[:, :, :s], "v_sink": values[:, :, :s],
                "codebooks": torch.cat([c.k_centroids, c.v_centroids]).half(),
                "k_thresholds": torch.cat([c.k_lower, c.k_upper]).half()}
        return {**held, **self._encode(keys[:, :, s:], values[:, :, s:], start=s)}

    def append(self, held, keys, values, *, n_new):
        if held["k_sink"].shape[2] < self.n_sink:  # the sink is not complete yet: start again
            return self.store(keys, values)
        b, h, _, d = keys.shape
        n_old = keys.shape[2] - n_new - self.n_sink  # quantized tokens held so far
        new = self._encode(keys[:, :, -n_new:], values[:, :, -n_new:], start=keys.shape[2] - n_new)
        out = dict(held)
        for name in ("k_codes", "v_codes"):
            out[name] = torch.cat([held[name], new[name]], 2)
        for name in ("v_lower", "v_upper"):
            out[name] = torch.cat([held[name].view(b, -1), new[name].view(b, -1)], 1).flatten()
        for kv in ("k", "v"):
            shift = n_old * b * h * d  # token-major positions of the new tokens follow the old ones
            out[f"{kv}_out_idx"] = torch.cat([held[f"{kv}_out_idx"], new[f"{kv}_out_idx"] + shift])
            out[f"{kv}_out_val"] = torch.cat([held[f"{kv}_out_val"], new[f"{kv}_out_val"]])
        return out

    def _dense(self, held, kv, x):
        """Scatter the float16 outliers into x (b, h, n, d) at their token-major positions."""
        tm = x.permute(2, 0, 1, 3).flatten().clone()
        tm[held[f"{kv}_out_idx"].long()] = held[f"{kv}_out_val"].float()
        b, h, n, d = x.shape
        return tm.view(n, b, h, d).permute(1, 2, 0, 3)

    def load(self, held):
        # load runs before this step's select, so the layer's constants come from what it holds
        k_c, v_c = held["codebooks"].float().chunk(2)
        k_lower, k_upper = held["k_thresholds"].float().chunk(2)
        b, h, s, d = held["k_sink"].shape
        kq = unpack_codes(held["k_codes"], self.bits, d)  # (b, h, n, d)
        vq = unpack_codes(held["v_codes"], self.bits, d)
        n = kq.shape[2]
        k = nuq_dequantize(kq, centroids=k_c, lower=k_lower, upper=k_upper)
        v_lo, v_hi = held["v_lower"].float().view(b, 1, n, 1), held["v_upper"].float().view(b, 1, n, 1)
        v = nuq_dequantize(vq, centroids=v_c, lower=v_lo, upper=v_hi)
        k = self._rope(self._dense(held, "k", k), s, 1.0)  # back to post-RoPE at positions s…s+n−1
        v = self._dense(held, "v", v)
        return (torch.cat([held["k_sink"], k.to(self.dtype)], 2),
                torch.cat([held["v_sink"], v.to(self.dtype)], 2))


@register(
    "kvquant", family="kv_cache", papers=["kvquant"], fidelity="simplified",
    summary="Pre-RoPE per-channel keys, sensitivity-weighted non-uniform codebooks, 1% sparse outliers",
    options={
        "bits": Option(3, "bits per dense key/value element (nuq2/3/4)"),
        "outlier_frac": Option(0.01, "fraction of each vector kept in float16 (dense-and-sparse)"),
        "n_sink": Option(1, "first tokens kept in full precision (attention-sink-aware)"),
        "calib_seqs": Option(16, "calibration sequences for thresholds, codebooks and Fisher weights"),
        "windows": Option(4, "held-out windows measured (batch)"),
        "prefill": Option(128, "prompt tokens before generation / teacher forcing"),
        "new_tokens": Option(128, "tokens generated per prompt"),
    },
    bench=[{"bits": 2}, {"bits": 4}],
    bench_models=("causal",),
)
def run_kvquant(ctx, *, bits, outlier_frac, n_sink, calib_seqs, windows, prefill, new_tokens) -> dict:
    if not 1 <= bits <= 8 or not 0 <= outlier_frac < 1:
        raise ValueError(f"--bits must be in 1..8 and --outlier-frac in [0, 1), got {bits}, {outlier_frac}")
    rotary = _rotary(ctx.model)
    if rotary is None:
        raise ValueError("kvquant needs a rotary (Llama-style) model: keys are quantized before RoPE")
    records = capture_pre_rope(ctx.model, ctx.calibration[:calib_seqs])
    ctx.model.zero_grad(set_to_none=True)
    calib = [calibrate_layer(r, bits=bits, outlier_frac=outlier_frac, seed=ctx.seed) for r in records]
    policy = KVQuantPolicy(calib, rotary, bits=bits, outlier_frac=outlier_frac, n_sink=n_sink)
    return measure_on_heldout(ctx, policy, windows=windows, prefill=prefill, new_tokens=new_tokens)
