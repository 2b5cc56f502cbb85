"""Encoding: the information-theoretic side of compression. Entropy coding of weights (Deep
Compression's pruning + weight sharing + Huffman pipeline; lossless coding of bf16 weights by their
exponents, the DFloat11 / ZipNN idea) and language models as compressors of text (arithmetic coding
with the causal LM against gzip, xz and zstd). Generic coders come from maintained packages
(`dahuffman`, `constriction`, `zstandard`, Python's `zlib`/`lzma`); what is coded, and how its size is
counted, is the project's own."""
