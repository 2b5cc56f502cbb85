"""Architecture adapters: the only place that knows where a model keeps its blocks and linears.

Each adapter answers four questions for one family (Llama-like decoders, OPT, GPT-2, BERT):
which module list holds the transformer blocks, which linear layers a block contains (in the order
data flows through them), which module produces each group of linears' shared input (so scaling
methods such as SmoothQuant and AWQ can fold a scale into it), and whether the model is a causal LM.
GPT-2's `Conv1D` stores its weight as (in, out); `get_weight`/`set_weight` hide that so every method
sees the `nn.Linear` layout (out, in).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

try:  # transformers' GPT-2 projection layer
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover
    Conv1D = ()  # type: ignore[assignment]


@dataclass(frozen=True)
class InputGroup:
    """Linears that read the same input, and the module whose output that input is.

    `prev` is a dotted name inside the block (a norm or a linear), or None when the input comes
    from outside the block or through a non-linearity, so nothing can absorb a scale.
    """

    prev: str | None
    linears: tuple[str, ...]
    # the module whose output scores this group's scale (AWQ); None: the innermost module holding
    # all of `linears` (q/k/v -> attention, gate/up -> MLP, a lone linear -> itself)
    inspect: str | None = None


@dataclass(frozen=True)
class Adapter:
    family: str
    blocks_path: str  # dotted path of the block ModuleList from the model root
    linear_names: tuple[str, ...]  # dotted names inside one block, in data-flow order
    input_groups: tuple[InputGroup, ...]
    causal: bool

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        return model.get_submodule(self.blocks_path)

    def linears(self, block: nn.Module) -> dict[str, nn.Module]:
        return {name: block.get_submodule(name) for name in self.linear_names}


def is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or (bool(Conv1D) and isinstance(module, Conv1D))


def get_weight(module: nn.Module) -> torch.Tensor:
    """The weight in (out_features, in_features) layout, as a view or copy of the parameter."""
    w = module.weight.data
    return w.t() if bool(Conv1D) and isinstance(module, Conv1D) else w


def set_weight(module: nn.Module, weight: torch.Tensor) -> None:
    """Write back a weight given in (out, in) layout, keeping the parameter's dtype and layout."""
    if bool(Conv1D) and isinstance(module, Conv1D):
        weight = weight.t()
    module.weight.data.copy_(weight.to(module.weight.dtype))


_LLAMA = Adapter(
    family="llama",
    blocks_path="model.layers",
    linear_names=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                  "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"),
    input_groups=(
        InputGroup("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
        InputGroup("self_attn.v_proj", ("self_attn.o_proj",)),
        InputGroup("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj")),
        InputGroup("mlp.up_proj", ("mlp.down_proj",)),
    ),
    causal=True,
)

_OPT = Adapter(
    family="opt",
    blocks_path="model.decoder.layers",
    linear_names=(
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "fc1", "fc2",
    ),
    input_groups=(
        InputGroup("self_attn_layer_norm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
        InputGroup("self_attn.v_proj", ("self_attn.out_proj",)),
        InputGroup("final_layer_norm", ("fc1",)),
        InputGroup(None, ("fc2",)),
    ),
    causal=True,
)

_GPT2 = Adapter(
    family="gpt2",
    blocks_path="transformer.h",
    linear_names=("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"),
    input_groups=(
        InputGroup("ln_1", ("attn.c_attn",), inspect="attn"),  # fused q/k/v: the attention output
        InputGroup(None, ("attn.c_proj",)),  # c_attn's output mixes q, k, v: no clean fold
        InputGroup("ln_2", ("mlp.c_fc",)),
        InputGroup(None, ("mlp.c_proj",)),
    ),
    causal=True,
)

_BERT = Adapter(
    family="bert",
    blocks_path="encoder.layer",
    linear_names=("attention.self.query", "attention.self.key", "attention.self.value",
                  "attention.output.dense", "intermediate.dense", "output.dense"),
    input_groups=(
        InputGroup(None, ("attention.self.query", "attention.self.key", "attention.self.value")),
        InputGroup("attention.self.value", ("attention.output.dense",)),
        InputGroup("attention.output.LayerNorm", ("intermediate.dense",)),
        InputGroup(None, ("output.dense",)),
    ),
    causal=False,
)

# model_type (config.model_type) -> adapter; Llama's layout is shared by most modern decoders.
ADAPTERS: dict[str, Adapter] = {
    "llama": _LLAMA, "mistral": _LLAMA, "qwen2": _LLAMA, "qwen3": _LLAMA, "gemma": _LLAMA,
    "opt": _OPT, "gpt2": _GPT2, "bert": _BERT, "roberta": _BERT,
}


def adapter_for(model: nn.Module) -> Adapter:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    adapter = ADAPTERS.get(model_type)
    if adapter is None:
        supported = ", ".join(sorted(ADAPTERS))
        raise ValueError(f"no adapter for model_type {model_type!r}; supported: {supported}")
    if adapter.family == "bert" and not hasattr(model, "encoder"):
        # A BertFor... head model keeps the encoder one level down.
        base = getattr(model, "base_model_prefix", "bert")
        return Adapter(adapter.family, f"{base}.{adapter.blocks_path}", adapter.linear_names,
                       adapter.input_groups, adapter.causal)
    return adapter
