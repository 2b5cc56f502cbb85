"""Simulated weight + activation quantization: one Linear and one way to put it into a model.

Methods that quantize activations (SmoothQuant, ZeroQuant, LLM.int8(), FP8, MX) cannot fold their
effect into the weights alone: the layer must quantize its input at every call. `FakeQuantLinear`
computes y = matmul(act_quant(x), weight_quant(W)) + b in floating point, where

- `W` is stored in the (out, in) layout, usually already de-quantized (what a deployment decodes);
- `weight_quant`, when given, is applied at every call instead (ZeroQuant's LKD trains the latent
  weight through a straight-through quantizer); `freeze()` then stores the quantized weight;
- `act_quant` fake-quantizes the input (..., in);
- `matmul(x (n, in) float32, W (out, in) float32) -> (n, out)` replaces the plain float matmul for
  methods whose product is itself special (LLM.int8()'s mixed-precision decomposition).

`swap_linears` replaces a block's linears by modules built from their weights, under the adapter's
names, reading GPT-2's Conv1D through `adapters.get_weight` so every builder sees (out, in).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from reference_impls.common.adapters import Adapter, get_weight

TensorFn = Callable[[torch.Tensor], torch.Tensor]


class FakeQuantLinear(nn.Module):
    """A Linear computing with a fake-quantized weight and, optionally, fake-quantized inputs."""

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        *,
        act_quant: TensorFn | None = None,
        weight_quant: TensorFn | None = None,
        matmul: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    ):
        super().__init__()
        # parameters (frozen), not buffers, so parameter counts and saved checkpoints see them
        self.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)  # (out, in)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.act_quant, self.weight_quant, self.matmul = act_quant, weight_quant, matmul
        self.out_features, self.in_features = weight.shape

    def quantized_weight(self) -> torch.Tensor:
        return self.weight if self.weight_quant is None else self.weight_quant(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.quantized_weight()
        if self.act_quant is not None:
            x = self.act_quant(x)
        if self.matmul is None:
            return nn.functional.linear(
                x, w.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype)
            )
        y = self.matmul(x.reshape(-1, self.in_features).float(), w.float())  # (n, out)
        if self.bias is not None:
            y = y + self.bias.float()
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    @torch.no_grad()
    def freeze(self) -> None:
        """Store the quantized weight itself (what a deployment keeps)."""
        if self.weight_quant is not None:
            self.weight.copy_(self.weight_quant(self.weight))


def swap_linears(
    block: nn.Module,
    linears: dict[str, nn.Module],
    make: Callable[[str, torch.Tensor, nn.Module], nn.Module],
) -> dict[str, nn.Module]:
    """Replace each linear of `block` by `make(name, weight, old)`, weight a float32 (out, in) copy.

    `linears` (dotted name inside the block -> module, e.g. a BlockContext's) is updated in place so
    later steps see the new modules; returns {name: new module}."""
    new = {}
    for name, old in list(linears.items()):
        new[name] = make(name, get_weight(old).detach().clone().float(), old)
        block.set_submodule(name, new[name])
        linears[name] = new[name]
    return new


def swap_model_linears(
    model: nn.Module, adapter: Adapter, make: Callable[[str, torch.Tensor, nn.Module], nn.Module]
) -> dict[str, nn.Module]:
    """`swap_linears` on every block; returns {full dotted name from the model root: new module}."""
    out = {}
    for i, block in enumerate(adapter.blocks(model)):
        for name, module in swap_linears(block, adapter.linears(block), make).items():
            out[f"{adapter.blocks_path}.{i}.{name}"] = module
    return out


def fake_quantize_linears(ctx, *, weight_quant: TensorFn, act_quant: TensorFn | None,
                          bits_of: Callable[[int, int], int]) -> int:
    """Every block linear of `ctx.model` becomes a FakeQuantLinear with the weight `weight_quant(W)`
    (stored de-quantized, in the old weight's dtype) and the input quantizer `act_quant`; records
    `bits_of(out, in)` in `ctx.ledger`. Returns the number of linears replaced."""
    new = swap_model_linears(
        ctx.model,
        ctx.adapter,
        lambda _name, w, old: FakeQuantLinear(
            weight_quant(w).to(old.weight.dtype), getattr(old, "bias", None), act_quant=act_quant
        ),
    )
    for name, module in new.items():
        ctx.ledger.add(name, module.weight.numel(), bits_of(module.out_features, module.in_features))
    return len(new)
