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

from reference_impls.pruning.structure import decoder_layers, remove_layers, run_with_hooks


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


@torch.no_grad()
def model_block_influence(model: nn.Module, batches: Iterable[torch.Tensor]) -> torch.Tensor:
    """BI of every decoder layer, averaged over all calibration tokens."""
    layers = decoder_layers(model)
    cos_sum = torch.zeros(len(layers), dtype=torch.float64)
    count = [0]

    def hook(i):
        def fn(x_in, x_out):
            x_out = x_out[0] if isinstance(x_out, tuple) else x_out
            a = x_in.reshape(-1, x_in.shape[-1]).double()
            b = x_out.reshape(-1, x_out.shape[-1]).double()
            cos_sum[i] += torch.nn.functional.cosine_similarity(a, b, dim=-1).sum()
            if i == 0:
                count[0] += a.shape[0]

        return fn

    run_with_hooks(model, batches, {layer: hook(i) for i, layer in enumerate(layers)})
    return 1 - cos_sum / count[0]


def shortgpt_prune(model: nn.Module, batches: Iterable[torch.Tensor], *, n_remove: int = 1) -> list[int]:
    """Remove the `n_remove` least influential layers in place; returns their original indices."""
    drop = layers_to_remove(model_block_influence(model, list(batches)), n_remove)
    remove_layers(model, drop)
    return drop
