"""Simulated number formats (FP8, OCP MX) usable as weight or activation quantizers by any method."""

from reference_impls.formats.fp8 import (
    E4M3,
    E5M2,
    FP4_E2M1,
    FP6_E2M3,
    FP6_E3M2,
    FloatFormat,
    fp8_quantize,
    fp_decode,
    fp_encode,
    fp_quantize,
)
from reference_impls.formats.mx import MX_FORMATS, MXFormat, mx_bits_per_element, mx_encode, mx_quantize

__all__ = [
    "E4M3",
    "E5M2",
    "FP4_E2M1",
    "FP6_E2M3",
    "FP6_E3M2",
    "FloatFormat",
    "MXFormat",
    "MX_FORMATS",
    "fp8_quantize",
    "fp_decode",
    "fp_encode",
    "fp_quantize",
    "mx_bits_per_element",
    "mx_encode",
    "mx_quantize",
]
