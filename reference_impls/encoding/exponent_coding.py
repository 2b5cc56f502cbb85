"""Exponent coding of bf16 weights: the idea of DFloat11 ("70% Size, 100% Accuracy: Lossless LLM
Compression for Efficient GPU Inference via Dynamic-Length Float", Zhang et al.; arXiv 2504.11651;
catalog record `dfloat11`) and ZipNN ("Lossless and Near-Lossless Compression for Foundation Models",
Hershcovitch et al.; arXiv 2404.15198; record `zipnn`).

A bf16 number is 1 sign bit, 8 exponent bits and 7 mantissa bits. Trained weights use only a few
dozen exponents with a very skewed distribution (their entropy is ~2.6 bits in the papers), while sign
and mantissa are close to uniform. So the exponents are entropy-coded and sign + mantissa are stored
as they are: about 11 bits per weight, bit-for-bit lossless.

Implemented (fidelity: simplified): DFloat11's format in its essentials: each tensor's exponents
Huffman-coded with a code built from that tensor (real coded bytes from `dahuffman`, the code book
counted), the sign and mantissa packed as one raw byte per weight; decoding rebuilds the bf16 bit
patterns exactly. The model's float32 weights are first rounded to bf16 (the format both papers
compress; the perplexity reported is the bf16 model's, which this coding reproduces bit-exactly).
Also reported: zstd (level 19) on the raw bf16 bytes, the generic baseline ZipNN improves on.
Not implemented: DFloat11's GPU decoding kernel (compact lookup tables, two-phase thread layout,
block-level decompression) and ZipNN's byte grouping with per-chunk huff0 coding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import zstandard

from reference_impls.common.entropy import HuffmanCoded, entropy_bits, huffman_encode
from reference_impls.common.registry import register


# ---------------------------------------------------------------- pure core
def split_bf16(weight: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(exponent, sign·mantissa) bytes of a bf16 tensor: bits 14-7, and bit 15 with bits 6-0."""
    bits = weight.detach().to(torch.bfloat16).contiguous().view(torch.int16).numpy().astype(np.uint16).ravel()
    exponent = ((bits >> 7) & 0xFF).astype(np.uint8)
    sign_mantissa = (((bits >> 15) << 7) | (bits & 0x7F)).astype(np.uint8)
    return exponent, sign_mantissa


def join_bf16(exponent: np.ndarray, sign_mantissa: np.ndarray, shape) -> torch.Tensor:
    sm = sign_mantissa.astype(np.uint16)
    bits = ((sm >> 7) << 15) | (exponent.astype(np.uint16) << 7) | (sm & 0x7F)
    return torch.from_numpy(bits.astype(np.int16)).view(torch.bfloat16).reshape(shape)


@dataclass
class CodedBF16:
    exponent: HuffmanCoded
    sign_mantissa: bytes
    shape: tuple[int, ...]

    @property
    def bits(self) -> int:
        return self.exponent.bits + len(self.sign_mantissa) * 8

    def decode(self) -> torch.Tensor:
        exponent = self.exponent.decode().astype(np.uint8)
        return join_bf16(exponent, np.frombuffer(self.sign_mantissa, dtype=np.uint8), self.shape)


def encode_bf16(weight: torch.Tensor) -> CodedBF16:
    """Huffman-coded exponents + raw sign/mantissa bytes of `weight` rounded to bf16."""
    exponent, sign_mantissa = split_bf16(weight)
    return CodedBF16(huffman_encode(exponent, symbol_bits=8), sign_mantissa.tobytes(), tuple(weight.shape))


# ---------------------------------------------------------------- model-level entry
@register(
    "exponent-coding", family="encoding", papers=["dfloat11", "zipnn"], fidelity="simplified",
    summary="Lossless bf16: Huffman-coded exponents + raw sign/mantissa bytes (DFloat11 / ZipNN idea)",
    options={},
)
def run_exponent_coding(ctx) -> dict:
    exact, n, exp_entropy_bits, zstd_bits = True, 0, 0.0, 0
    for name, p in ctx.model.named_parameters():  # tied weights appear once
        with torch.no_grad():
            p.copy_(p.to(torch.bfloat16).to(p.dtype))  # the bf16 model is what is coded losslessly
        if p.dim() < 2:
            continue  # norms and biases stay at 16 bits
        coded = encode_bf16(p)
        bf16 = p.detach().to(torch.bfloat16)
        exact &= torch.equal(coded.decode().view(torch.int16), bf16.view(torch.int16))  # bit patterns
        ctx.ledger.add(name, p.numel(), coded.bits)
        exp_entropy_bits += entropy_bits(split_bf16(p)[0]) * p.numel()
        raw = bf16.contiguous().view(torch.int16).numpy().tobytes()
        zstd_bits += len(zstandard.ZstdCompressor(level=19).compress(raw)) * 8
        n += p.numel()
    return {"round_trip_exact": bool(exact), "exponent_entropy_bits": exp_entropy_bits / n,
            "entropy_bound_bits_per_weight": 8 + exp_entropy_bits / n,
            "zstd_bits_per_weight": zstd_bits / n, "coded_weights": n}
