"""ShortGPT: "ShortGPT: Layers in Large Language Models are More Redundant Than You Expect" (Men,
Xu, Zhang, Lin, Lu, Han, Chen; arXiv 2403.03853).

Implemented: Block Influence BI_i = 1 - E_t[cos(x_t^(i), x_t^(i+1))] of every decoder layer, the
expected cosine similarity between a token's hidden state entering and leaving the layer (eq. 2 of
the paper), measured on calibration text; then whole-layer removal of the `n_remove` layers with the
lowest BI (the most similar input and output), renumbering the rest.
Not implemented: the paper's comparison metrics (Relative Magnitude, gradient-based) and its
combination with quantization. Fidelity: exact.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from reference_impls.pruning._structure import blocks_of, model_block_influence, remove_layers


def block_influence(hidden_in: torch.Tensor, hidden_out: torch.Tensor) -> torch.Tensor:
    """1 - mean cosine similarity over tokens; inputs (..., tokens, hidden)."""
    a = hidden_in.reshape(-1, hidden_in.shape[-1]).double()
    b = hidden_out.reshape(-1, hidden_out.shape[-1]).double()
    return 1 - torch.nn.functional.cosine_similarity(a, b, dim=-1).mean()


def layers_to_remove(influence: torch.Tensor, n_remove: int) -> list[int]:
    """Indices of the `n_remove` layers of lowest block influence, ascending."""
    if not 0 <= n_remove < influence.numel():
        raise ValueError(f"n_remove must be in [0, {influence.numel()}), got {n_remove}")
    return sorted(torch.topk(influence, n_remove, largest=False).indices.tolist())




def remove_blocks(model: nn.Module, drop: list[int]) -> None:
    """Delete whole blocks (decoder or encoder layers) and renumber what indexes them."""
    if hasattr(getattr(model, "model", None), "layers"):
        remove_layers(model, drop)  # Llama-family: also renumbers the KV-cache layer indices
        return
    blocks, path = blocks_of(model)
    kept = nn.ModuleList([b for i, b in enumerate(blocks) if i not in set(drop)])
    parent, _, attr = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, kept)
    model.config.num_hidden_layers = len(kept)


def shortgpt_prune(model: nn.Module, batches: Iterable, *, n_remove: int = 1) -> list[int]:
    """Remove the `n_remove` least influential blocks in place; returns their original indices."""
    drop = layers_to_remove(model_block_influence(model, list(batches)), n_remove)
    remove_blocks(model, drop)
    return drop


# ---------------------------------------------------------------- model-level entry
from reference_impls.common.registry import Option, register  # noqa: E402
from reference_impls.pruning._latency import LatencyProbe  # noqa: E402
from reference_impls.pruning._structure import count_params  # noqa: E402


@register(
    "shortgpt",
    family="pruning",
    papers=["shortgpt"],
    bench=[{"n_remove": 1}, {"n_remove": 2}],
    fidelity="exact",
    summary="ShortGPT: remove the layers whose output is most similar to their input (Block Influence)",
    options={"n_remove": Option(1, "number of layers to remove")},
)
def run_shortgpt(ctx, *, n_remove: int) -> dict:
    blocks, path = blocks_of(ctx.model)
    sizes = [{n: m.weight.numel() for n, m in ctx.adapter.linears(b).items()} for b in blocks]
    params_dense = count_params(ctx.model)
    probe = LatencyProbe(ctx.model) if ctx.loaded.kind == "causal" else None
    influence = model_block_influence(ctx.model, ctx.calibration)
    drop = layers_to_remove(influence, n_remove)
    remove_blocks(ctx.model, drop)
    for i, layer_sizes in enumerate(sizes):
        for name, n in layer_sizes.items():
            ctx.ledger.add(f"{path}.{i}.{name}", n, 0 if i in drop else n * 16, held=0 if i in drop else n)
    out = {
        "removed_layers": drop,
        "block_influence": [round(float(b), 6) for b in influence],
        "params_removed": 1 - count_params(ctx.model) / params_dense,
    }
    if probe is not None:
        out.update(probe.metrics(ctx.model))
    return out
