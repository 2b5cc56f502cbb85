"""<Method>: "<Full paper title, latest version>" (<First author> et al.; arXiv <id>, <venue>);
catalog record `<record-id>`.

<Two or three sentences: the problem and the idea, in the paper's notation.>

Implemented (fidelity: exact | simplified | family): <what, with the official code's conventions that
decide agreement with it — e.g. "groups of 128 along the input, min-max grid, as in <repo>/<file>">.
Not implemented: <what is left out, and why>.

How to use this template: copy it to `reference_impls/<family>/<method>.py` (the family folder needs an
`__init__.py`; any module there whose name does not start with `_` registers itself), rename, replace
the core, keep the shape: docstring, pure core, short model-level entry. This file itself is never
imported (its name starts with `_`), so it registers nothing. The example below is round-to-nearest
with a per-row absmax grid, complete so that the shape is clear.
"""

from __future__ import annotations

import torch

from reference_impls.common.registry import Option, register


# ---------------------------------------------------------------- pure core (tensors in, tensor out)
def example_quantize(weight: torch.Tensor, *, bits: int = 8) -> torch.Tensor:
    """De-quantized weight (out, in), same shape and dtype: symmetric per-row absmax grid (eq. <n>)."""
    w = weight.float()  # (out, in)
    qmax = 2 ** (bits - 1) - 1
    scale = w.abs().amax(1, keepdim=True).clamp(min=1e-12) / qmax  # (out, 1)
    return (torch.round(w / scale).clamp(-qmax, qmax) * scale).to(weight.dtype)


# ---------------------------------------------------------------- model-level entry
@register(
    "example", family="quantization", papers=["<record-id>"], fidelity="simplified",
    summary="One line: what the method does",
    options={"bits": Option(8, "bits per weight (2-8)")},  # kebab-case on the command line: --bits
    bench=[{"bits": 4}, {"bits": 8}],  # the grid `atlas bench example` runs
    bench_models=("causal", "encoder"),
)
def run_example(ctx, *, bits: int) -> dict:
    """Edit the model in place through the shared machinery; return method-specific metrics."""
    if not 2 <= bits <= 8:
        raise ValueError(f"--bits must be between 2 and 8, got {bits}")

    def quantize(name: str, w: torch.Tensor) -> torch.Tensor:  # calibration-free: ctx.map_linears
        ctx.ledger.add_quantized(name, *w.shape, bits=bits, group_size=-1, sym=True)  # true storage cost
        return example_quantize(w, bits=bits)

    ctx.map_linears(quantize)
    return {}
