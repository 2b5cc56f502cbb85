"""KIVI: "KIVI: A Tuning-Free Asymmetric 2bit Quantization for KV Cache" (Liu, Yuan, Jin, Zhong, Xu,
Braverman, Chen, Hu; arXiv 2402.02750, ICML 2024); catalog record `kivi`.

Keys have a few outlier *channels*, values have none, so KIVI quantizes keys per channel (a group is
`group_size` consecutive tokens of one channel) and values per token (a group is `group_size`
consecutive channels of one token), both asymmetric min-max, and keeps the most recent tokens in full
precision: per-channel groups need `group_size` tokens before they can be formed.

Implemented (fidelity: exact for the cache contents): `kivi_quantize`, the prefill path of the official
code (jy-yuan/KIVI, `LlamaAttention_KIVI`) with R = residual_length: keys quantized over the first
T − (T mod R) tokens, values over the first T − R; scale = (max − min)/(2^bits − 1), clamp, round half to
even. `KiviPolicy`, its decoding rule: each new key joins the full-precision key window, which is
quantized as a whole (in groups of `group_size` tokens) when it reaches R tokens; each new value joins
the full-precision value window of the last R tokens and the oldest one leaves it quantized per token.
Quantization happens after the step's attention, which sees the new token in full precision, as in the
official code. With R a multiple of group_size this rule holds exactly the tokens and groups that
`kivi_quantize` of the whole sequence holds, at every step (the tests check it). The cache holds
packed b-bit codes and float16 scales and minima (the official kernels keep them in the model's
half precision; here the model runs in float32, so the full-precision window is float32).

Not implemented: the fused CUDA/Triton kernels (dequantization inside the attention matmuls), so
tokens/s measures a dequantize-then-attend path; KIVI's separate key and value bit widths are one
`--bits` here.
"""

from __future__ import annotations

import torch

from reference_impls.common.generation import KVPolicy, measure_on_heldout
from reference_impls.common.kv_codes import minmax_codes, minmax_decode, pack_codes, unpack_codes
from reference_impls.common.registry import Option, register


def _per_channel(keys: torch.Tensor, bits: int, group_size: int, scale_dtype: torch.dtype):
    """Keys (b, h, n, d), n a multiple of group_size → codes/scale/min with tokens last: (b, h, d, n)."""
    return minmax_codes(keys.transpose(2, 3), bits=bits, group_size=group_size, scale_dtype=scale_dtype)


def kivi_quantize(keys: torch.Tensor, values: torch.Tensor, *, bits: int = 2, group_size: int = 32,
                  residual_length: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """KIVI's prefill: (keys_dequant, values_dequant), float32, (batch, kv_heads, seq, head_dim) each."""
    if residual_length % group_size:
        raise ValueError(f"residual_length {residual_length} must be a multiple of group_size {group_size}")
    T = keys.shape[2]
    n_k = T - T % residual_length  # keys: whole residual windows quantized, per channel
    n_v = max(T - residual_length, 0)  # values: all but the last R tokens, per token
    k, v = keys.float().clone(), values.float().clone()
    if n_k:
        codes = _per_channel(k[:, :, :n_k], bits, group_size, torch.float32)  # (b, h, d, n_k)
        k[:, :, :n_k] = minmax_decode(*codes).transpose(2, 3)
    if n_v:
        v[:, :, :n_v] = minmax_decode(*minmax_codes(v[:, :, :n_v], bits=bits, group_size=group_size,
                                                    scale_dtype=torch.float32))
    return k, v


class KiviPolicy(KVPolicy):
    """Quantized keys (per channel) and values (per token) plus KIVI's full-precision windows."""

    def __init__(self, *, bits: int = 2, group_size: int = 32, residual_length: int = 128,
                 scale_dtype: torch.dtype = torch.float16) -> None:
        if residual_length % group_size:
            raise ValueError(f"residual_length {residual_length} must be a multiple of {group_size}")
        self.bits, self.G, self.R, self.scale_dtype = bits, group_size, residual_length, scale_dtype

    def _keys(self, k: torch.Tensor) -> dict[str, torch.Tensor]:
        codes, scale, lo = _per_channel(k, self.bits, self.G, self.scale_dtype)  # (b, h, d, n)
        return {"k_codes": pack_codes(codes, self.bits), "k_scale": scale, "k_min": lo}

    def _values(self, v: torch.Tensor) -> dict[str, torch.Tensor]:
        codes, scale, lo = minmax_codes(v, bits=self.bits, group_size=self.G, scale_dtype=self.scale_dtype)
        return {"v_codes": pack_codes(codes, self.bits), "v_scale": scale, "v_min": lo}  # (b, h, n, ·)

    def store(self, keys, values):
        """The prefill: `kivi_quantize`'s split, held as codes + the full-precision windows."""
        T = keys.shape[2]
        n_k, n_v = T - T % self.R, max(T - self.R, 0)
        return {**self._keys(keys[:, :, :n_k]), "k_full": keys[:, :, n_k:],
                **self._values(values[:, :, :n_v]), "v_full": values[:, :, n_v:]}

    def append(self, held, keys, values, *, n_new):
        """Decoding: new tokens join the windows; a key window of R is quantized, values beyond R leave."""
        out = dict(held)
        k_full = torch.cat([held["k_full"], keys[:, :, -n_new:]], 2)
        n_k = k_full.shape[2] - k_full.shape[2] % self.R  # = R when the window just filled (n_new = 1)
        if n_k:
            new = self._keys(k_full[:, :, :n_k])
            out.update({name: torch.cat([held[name], t], -1) for name, t in new.items()})  # tokens are last
        v_full = torch.cat([held["v_full"], values[:, :, -n_new:]], 2)
        n_v = max(v_full.shape[2] - self.R, 0)
        if n_v:
            new = self._values(v_full[:, :, :n_v])
            out.update({name: torch.cat([held[name], t], 2) for name, t in new.items()})
        out.update(k_full=k_full[:, :, n_k:], v_full=v_full[:, :, n_v:])
        return out

    def load(self, held):
        k_full, v_full = held["k_full"], held["v_full"]
        d = k_full.shape[-1]
        n_k = held["k_scale"].shape[-1] * self.G
        k = minmax_decode(unpack_codes(held["k_codes"], self.bits, n_k), held["k_scale"], held["k_min"])
        v = minmax_decode(unpack_codes(held["v_codes"], self.bits, d), held["v_scale"], held["v_min"])
        return (torch.cat([k.transpose(2, 3).to(k_full.dtype), k_full], 2),
                torch.cat([v.to(v_full.dtype), v_full], 2))


@register(
    "kivi", family="kv_cache", papers=["kivi"], fidelity="exact",
    summary="Keys per channel, values per token, asymmetric 2-bit, recent tokens in full precision",
    options={
        "bits": Option(2, "bits per quantized key/value element (the paper: 2 or 4)"),
        "group_size": Option(32, "tokens per key group / channels per value group"),
        "residual_length": Option(128, "R: full-precision window (a multiple of group_size)"),
        "windows": Option(4, "held-out windows measured (batch)"),
        "prefill": Option(128, "prompt tokens before generation / teacher forcing"),
        "new_tokens": Option(128, "tokens generated per prompt"),
    },
    bench=[{"bits": 2, "residual_length": 32}, {"bits": 4, "residual_length": 32}],
    bench_models=("causal",),
)
def run_kivi(ctx, *, bits, group_size, residual_length, windows, prefill, new_tokens) -> dict:
    if not 1 <= bits <= 8:
        raise ValueError(f"--bits must be in 1..8, got {bits}")
    policy = KiviPolicy(bits=bits, group_size=group_size, residual_length=residual_length)
    return measure_on_heldout(ctx, policy, windows=windows, prefill=prefill, new_tokens=new_tokens)
