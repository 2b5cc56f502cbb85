"""Pruning reference implementations: unstructured, N:M, layer-wise sparsity and structured.

One module per method; each names its paper and fidelity in its docstring. `masks` holds the
selection rules the methods share, `storage` the real compressed formats used to count bits.
"""
