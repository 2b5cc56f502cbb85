"""Entropy coding shared by the encoding methods: a real Huffman code (the `dahuffman` package) with
its size counted from the coded bytes, and the empirical entropy it is measured against.

Counting convention: the coded stream's bytes (dahuffman appends an end-of-stream symbol and pads
the last byte) plus the code book, stored canonically as one (symbol, code length) pair per symbol:
`symbol_bits` + 8 bits each. Huffman's guarantee, H ≤ mean code length < H + 1 bits per symbol, is
what the tests check the stream against.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np
from dahuffman import HuffmanCodec


@dataclass
class HuffmanCoded:
    data: bytes  # the coded stream
    codec: HuffmanCodec
    n_symbols: int
    symbol_bits: int  # width of one symbol in the stored code book

    @property
    def codebook_bits(self) -> int:
        return (len(self.codec.get_code_table()) - 1) * (self.symbol_bits + 8)  # the EOF entry is implicit

    @property
    def bits(self) -> int:
        """Everything a decoder needs: the stream and the code book."""
        return len(self.data) * 8 + self.codebook_bits

    def decode(self) -> np.ndarray:
        return np.asarray(self.codec.decode(self.data), dtype=np.int64)


def huffman_encode(symbols: np.ndarray, *, symbol_bits: int) -> HuffmanCoded:
    """Huffman-code a 1-D integer array with a code built from its own frequencies."""
    values = np.asarray(symbols).ravel().tolist()
    codec = HuffmanCodec.from_frequencies(Counter(values))
    return HuffmanCoded(codec.encode(values), codec, len(values), symbol_bits)


def entropy_bits(symbols: np.ndarray) -> float:
    """Empirical (order-0) entropy of the array, in bits per symbol."""
    _, counts = np.unique(np.asarray(symbols).ravel(), return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum()) if len(p) > 1 else 0.0


def mean_code_length(coded: HuffmanCoded) -> float:
    """Σ count·code length / n, from the code table (the stream without padding and EOF)."""
    table = coded.codec.get_code_table()
    values = coded.decode()
    uniq, counts = np.unique(values, return_counts=True)
    total = sum(int(c) * table[int(u)][0] for u, c in zip(uniq, counts, strict=True))
    return total / max(coded.n_symbols, 1) if coded.n_symbols else math.nan
