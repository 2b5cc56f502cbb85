"""Quantization methods: RTN, GPTQ (issue 8) and the methods built on their grid."""
