"""KV-cache compression: eviction and quantization policies plugged into the generation hook of
`reference_impls.common.generation` (a `transformers.Cache` driven by a per-method policy).

One module per method; each names its paper and fidelity in its docstring.
"""
