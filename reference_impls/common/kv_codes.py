"""Compact integer codes for quantized KV caches: bit packing and asymmetric min-max groups.

A quantized cache must hold what a real one would, so that `PolicyCache.nbytes` is honest: b-bit codes
packed 8/b per byte (any b in 1..8; 3-bit codes straddle bytes), plus one scale and one minimum per group
in `scale_dtype` (float16 by default, as the KIVI and KVQuant kernels keep them). Shared by `kv-int`,
`kivi` and `kvquant` so the three are measured on one grid and one encoding.
"""

from __future__ import annotations

import torch


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Codes (..., n) with values < 2**bits → uint8 (..., ceil(n·bits/8)), least significant bit first."""
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")
    dev = codes.device
    planes = (codes.to(torch.int16).unsqueeze(-1) >> torch.arange(bits, device=dev)) & 1  # (..., n, bits)
    flat = planes.flatten(-2)  # (..., n·bits)
    flat = torch.nn.functional.pad(flat, (0, (-flat.shape[-1]) % 8))
    weights = 1 << torch.arange(8, device=dev, dtype=torch.int16)
    return (flat.unflatten(-1, (-1, 8)) * weights).sum(-1).to(torch.uint8)  # (..., n_bytes)


def unpack_codes(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of `pack_codes`: uint8 (..., n_bytes) → uint8 codes (..., n)."""
    dev = packed.device
    planes = (packed.to(torch.int16).unsqueeze(-1) >> torch.arange(8, device=dev)) & 1  # (..., n_bytes, 8)
    flat = planes.flatten(-2)[..., : n * bits].unflatten(-1, (n, bits))  # (..., n, bits)
    weights = 1 << torch.arange(bits, device=dev, dtype=torch.int16)
    return (flat * weights).sum(-1).to(torch.uint8)


def minmax_codes(x: torch.Tensor, *, bits: int, group_size: int,
                 scale_dtype: torch.dtype = torch.float16) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric min-max quantization in runs of `group_size` along the last dimension.

    scale = (max − min)/(2^bits − 1) and the minimum are rounded to `scale_dtype` first (they are what is
    stored), then code = round_half_even(clamp((x − min)/scale, 0, 2^bits − 1)); a constant group
    (scale 0) gets code 0. Returns codes uint8 (..., n), scale and minimum (..., n // group_size).
    """
    *lead, n = x.shape
    if n % group_size:
        raise ValueError(f"group size {group_size} must divide the quantized dimension {n}")
    top = 2**bits - 1
    g = x.float().reshape(*lead, n // group_size, group_size)  # (..., groups, group_size)
    lo, hi = g.amin(-1), g.amax(-1)
    scale, lo = ((hi - lo) / top).to(scale_dtype), lo.to(scale_dtype)
    s, m = scale.float().unsqueeze(-1), lo.float().unsqueeze(-1)
    q = ((g - m) / torch.where(s > 0, s, torch.ones_like(s))).clamp(0, top).round()  # round: half to even
    return q.to(torch.uint8).reshape(x.shape), scale, lo


def minmax_decode(codes: torch.Tensor, scale: torch.Tensor, lo: torch.Tensor) -> torch.Tensor:
    """x̂ = min + code·scale, float32, codes (..., n) with scale/min (..., n // group_size)."""
    if scale.shape[-1] == 0:  # nothing quantized yet
        return codes.float()
    group_size = codes.shape[-1] // scale.shape[-1]
    g = codes.float().unflatten(-1, (-1, group_size))  # (..., groups, group_size)
    return (lo.float().unsqueeze(-1) + g * scale.float().unsqueeze(-1)).flatten(-2)


def nbytes(tensors: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())
