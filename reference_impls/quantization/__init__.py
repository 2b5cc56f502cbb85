"""Quantization methods: RTN, GPTQ and the methods built on their grid (weight-only, weight-activation, low-bit)."""
