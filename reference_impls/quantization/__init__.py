"""Quantization methods: RTN, GPTQ and the methods built on their grid."""
