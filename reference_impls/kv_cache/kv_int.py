"""kv-int: the plain per-token INT-b KV cache, the baseline every KV quantizer is measured against.

The KV compression of FlexGen ("FlexGen: High-Throughput Generative Inference of Large Language Models
with a Single GPU", arXiv 2303.06865, record `flexgen`): fine-grained group-wise asymmetric min-max
quantization of the cache, grouped along each head's channels (FMInference/FlexGen's cache
`CompressionConfig(num_bits=4, group_size=64, group_dim=2, symmetric=False)` on (seq, batch·heads,
head_dim)), and the naive per-token scheme that KIVI (arXiv 2402.02750) and KVQuant (arXiv 2401.18079)
compare with. Every key and value vector of every head is quantized on its own, asymmetric min-max over
its head_dim channels (or in runs of `--group-size` channels), as soon as it enters the cache; there is
no full-precision window.

Held in the cache: b-bit codes packed 8/b per byte along head_dim, and per (token, head, group) one
float16 scale and one float16 minimum (`common.kv_codes`). Not implemented: FlexGen's offloading
schedule and its cost-model search (the paper's main contribution) and its weight compression.
Fidelity: `family` (FlexGen's cache quantizer, not FlexGen).
"""

from __future__ import annotations

import torch

from reference_impls.common.generation import KVPolicy, measure_on_heldout
from reference_impls.common.kv_codes import minmax_codes, minmax_decode, pack_codes, unpack_codes
from reference_impls.common.registry import Option, register


def kv_int_quantize(x: torch.Tensor, *, bits: int = 4, group_size: int = -1,
                    scale_dtype: torch.dtype = torch.float16) -> torch.Tensor:
    """Per-token quantize-dequantize of keys or values (batch, kv_heads, seq, head_dim) → float32.

    Each token's head_dim vector is split in runs of `group_size` channels (-1: the whole vector),
    asymmetric min-max, round half to even; scale and minimum rounded to `scale_dtype`.
    """
    g = x.shape[-1] if group_size == -1 else group_size
    return minmax_decode(*minmax_codes(x, bits=bits, group_size=g, scale_dtype=scale_dtype))


class PerTokenPolicy(KVPolicy):
    """Every position quantized on arrival; what is held is packed codes + float16 scales/minima."""

    def __init__(self, *, bits: int, group_size: int = -1) -> None:
        self.bits, self.group_size = bits, group_size

    def _encode(self, x: torch.Tensor, prefix: str) -> dict[str, torch.Tensor]:
        g = x.shape[-1] if self.group_size == -1 else self.group_size
        codes, scale, lo = minmax_codes(x, bits=self.bits, group_size=g)
        return {f"{prefix}_codes": pack_codes(codes, self.bits), f"{prefix}_scale": scale,
                f"{prefix}_min": lo}

    def _decode(self, held: dict[str, torch.Tensor], prefix: str, dtype: torch.dtype) -> torch.Tensor:
        scale = held[f"{prefix}_scale"]
        g = self.head_dim if self.group_size == -1 else self.group_size
        codes = unpack_codes(held[f"{prefix}_codes"], self.bits, scale.shape[-1] * g)  # (b, h, T, d)
        return minmax_decode(codes, scale, held[f"{prefix}_min"]).to(dtype)

    def store(self, keys, values):
        self.head_dim, self.dtype = keys.shape[-1], keys.dtype
        return {**self._encode(keys, "k"), **self._encode(values, "v")}

    def load(self, held):
        return self._decode(held, "k", self.dtype), self._decode(held, "v", self.dtype)

    def append(self, held, keys, values, *, n_new):
        # per-token codes do not depend on other tokens: encode the new ones and concatenate
        new = self.store(keys[:, :, -n_new:], values[:, :, -n_new:])
        return {name: torch.cat([held[name], t], 2) for name, t in new.items()}


@register(
    "kv-int", family="kv_cache", papers=["flexgen"], fidelity="family",
    summary="Baseline: per-token asymmetric INT-b KV cache (min-max per head, optional channel groups)",
    options={
        "bits": Option(4, "bits per cached key/value element (1..8)"),
        "group_size": Option(-1, "channels per scale along head_dim (-1: the whole head)"),
        "windows": Option(4, "held-out windows measured (batch)"),
        "prefill": Option(128, "prompt tokens before generation / teacher forcing"),
        "new_tokens": Option(128, "tokens generated per prompt"),
    },
    bench=[{"bits": 8}, {"bits": 4}, {"bits": 2}],
    bench_models=("causal",),
)
def run_kv_int(ctx, *, bits, group_size, windows, prefill, new_tokens) -> dict:
    if not 1 <= bits <= 8:
        raise ValueError(f"--bits must be in 1..8, got {bits}")
    policy = PerTokenPolicy(bits=bits, group_size=group_size)
    return measure_on_heldout(ctx, policy, windows=windows, prefill=prefill, new_tokens=new_tokens)
