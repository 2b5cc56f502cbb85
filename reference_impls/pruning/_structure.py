"""Physical surgery on Llama-family decoders, shared by the structured pruners.

Structured pruning only pays off when matrices get smaller, so these helpers replace `nn.Linear`
modules by smaller ones (never masks): removing whole key/value groups of attention heads (their
query heads, keys, values and the matching columns of `o_proj`), removing MLP channels (rows of
`gate_proj`/`up_proj`, columns of `down_proj`), removing query heads inside every KV group, removing
embedding channels of the residual stream, and removing whole decoder layers. Grouped-query
attention constrains head removal to whole KV groups, so every remaining query head keeps its key
and value head and `num_key_value_groups` stays valid.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from reference_impls.common.adapters import adapter_for


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None or not hasattr(layers[0], "self_attn") or not hasattr(layers[0].mlp, "gate_proj"):
        raise ValueError("structured pruning here supports Llama-family decoders (q/k/v/o, gate/up/down)")
    return layers


def _sliced_linear(linear: nn.Linear, rows: torch.Tensor | None, cols: torch.Tensor | None) -> nn.Linear:
    W = linear.weight.data
    W = W if rows is None else W[rows]
    W = W if cols is None else W[:, cols]
    bias = linear.bias
    new = nn.Linear(W.shape[1], W.shape[0], bias=bias is not None, device=W.device, dtype=W.dtype)
    new.weight.data.copy_(W)
    if bias is not None:
        new.bias.data.copy_(bias.data if rows is None else bias.data[rows])
    return new


def kv_groups(attn: nn.Module) -> tuple[int, int, int]:
    """(number of KV groups, query heads per group, head dim) of a Llama attention module."""
    head_dim = attn.head_dim
    n_kv = attn.k_proj.out_features // head_dim
    return n_kv, attn.num_key_value_groups, head_dim


def keep_attention_groups(attn: nn.Module, keep: torch.Tensor) -> None:
    """Keep the KV groups whose indices are in `keep` (ascending), removing the rest physically."""
    n_kv, q_per_kv, hd = kv_groups(attn)
    keep = torch.as_tensor(keep, dtype=torch.long).sort().values
    if keep.numel() == 0:
        raise ValueError("at least one KV group must remain in every layer")
    kv_rows = (keep.unsqueeze(1) * hd + torch.arange(hd)).flatten()  # (kept·hd,)
    q_heads = (keep.unsqueeze(1) * q_per_kv + torch.arange(q_per_kv)).flatten()
    q_rows = (q_heads.unsqueeze(1) * hd + torch.arange(hd)).flatten()
    attn.q_proj = _sliced_linear(attn.q_proj, q_rows, None)
    attn.k_proj = _sliced_linear(attn.k_proj, kv_rows, None)
    attn.v_proj = _sliced_linear(attn.v_proj, kv_rows, None)
    attn.o_proj = _sliced_linear(attn.o_proj, None, q_rows)


def keep_mlp_channels(mlp: nn.Module, keep: torch.Tensor) -> None:
    keep = torch.as_tensor(keep, dtype=torch.long).sort().values
    if keep.numel() == 0:
        raise ValueError("at least one MLP channel must remain in every layer")
    mlp.gate_proj = _sliced_linear(mlp.gate_proj, keep, None)
    mlp.up_proj = _sliced_linear(mlp.up_proj, keep, None)
    mlp.down_proj = _sliced_linear(mlp.down_proj, None, keep)


def keep_query_heads(attn: nn.Module, keep: torch.Tensor) -> None:
    """Keep, in every KV group, the query heads whose within-group indices are the rows of `keep`
    (n_kv, k); keys and values stay whole, so every group keeps the same k query heads (GQA stays valid)."""
    n_kv, q_per_kv, hd = kv_groups(attn)
    keep = torch.as_tensor(keep, dtype=torch.long).sort(dim=1).values  # (n_kv, k)
    if keep.shape[0] != n_kv or keep.shape[1] == 0 or int(keep.max()) >= q_per_kv:
        raise ValueError(f"keep must be (n_kv={n_kv}, k) with 1 <= k and indices < {q_per_kv}")
    q_heads = (torch.arange(n_kv).unsqueeze(1) * q_per_kv + keep).flatten()  # (n_kv·k,)
    q_rows = (q_heads.unsqueeze(1) * hd + torch.arange(hd)).flatten()
    attn.q_proj = _sliced_linear(attn.q_proj, q_rows, None)
    attn.o_proj = _sliced_linear(attn.o_proj, None, q_rows)
    attn.num_key_value_groups = keep.shape[1]


def keep_hidden_channels(model: nn.Module, keep: torch.Tensor) -> None:
    """Keep the embedding (residual-stream) channels `keep`: columns of the token embedding and of every
    linear reading the stream, rows of o_proj/down_proj, entries of every RMSNorm weight, columns of the
    LM head (re-tied to the embedding when the model ties them); `config.hidden_size` updated."""
    layers = decoder_layers(model)
    keep = torch.as_tensor(keep, dtype=torch.long).sort().values
    if keep.numel() == 0:
        raise ValueError("at least one embedding channel must remain")
    cfg = model.config
    if getattr(cfg, "head_dim", None) is None:  # head_dim would otherwise follow hidden_size on reload
        cfg.head_dim = layers[0].self_attn.head_dim
    emb = model.get_input_embeddings()
    head = model.get_output_embeddings()
    tied = head is not None and head.weight is emb.weight
    new_emb = nn.Embedding(emb.num_embeddings, keep.numel(), padding_idx=emb.padding_idx,
                           device=emb.weight.device, dtype=emb.weight.dtype)
    new_emb.weight.data.copy_(emb.weight.data[:, keep])
    model.set_input_embeddings(new_emb)

    def slice_norm(norm: nn.Module) -> None:
        norm.weight = nn.Parameter(norm.weight.data[keep].clone())

    for layer in layers:
        slice_norm(layer.input_layernorm)
        slice_norm(layer.post_attention_layernorm)
        attn, mlp = layer.self_attn, layer.mlp
        attn.q_proj, attn.k_proj, attn.v_proj = (_sliced_linear(m, None, keep)
                                                 for m in (attn.q_proj, attn.k_proj, attn.v_proj))
        attn.o_proj = _sliced_linear(attn.o_proj, keep, None)
        mlp.gate_proj, mlp.up_proj = (_sliced_linear(m, None, keep) for m in (mlp.gate_proj, mlp.up_proj))
        mlp.down_proj = _sliced_linear(mlp.down_proj, keep, None)
        if hasattr(layer, "hidden_size"):
            layer.hidden_size = keep.numel()
    slice_norm(model.model.norm)
    if head is not None:
        new_head = _sliced_linear(head, None, keep)
        if tied:
            new_head.weight = new_emb.weight
        model.set_output_embeddings(new_head)
    cfg.hidden_size = keep.numel()


def add_output_bias(linear: nn.Linear, bias: torch.Tensor) -> None:
    """Add `bias` (out,) to a linear layer's output, creating the bias parameter if it has none."""
    if linear.bias is None:
        linear.bias = nn.Parameter(
            torch.zeros(linear.out_features, dtype=linear.weight.dtype, device=bias.device)
        )
    linear.bias.data += bias.to(linear.bias.dtype)


def remove_layers(model: nn.Module, drop: Iterable[int]) -> None:
    """Delete whole decoder layers and renumber the rest (the KV cache indexes layers by position)."""
    layers = decoder_layers(model)
    drop = set(int(i) for i in drop)
    kept = [layer for i, layer in enumerate(layers) if i not in drop]
    if not kept:
        raise ValueError("cannot remove every layer")
    model.model.layers = nn.ModuleList(kept)
    for i, layer in enumerate(kept):
        layer.self_attn.layer_idx = i
    cfg = model.config
    if getattr(cfg, "layer_types", None) is not None:
        cfg.layer_types = [t for i, t in enumerate(cfg.layer_types) if i not in drop]
    cfg.num_hidden_layers = len(kept)


def count_params(model: nn.Module) -> int:
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def model_inputs(model: nn.Module, batch) -> dict:
    """Keyword inputs for one calibration batch (a dict of tensors, or a tensor of token ids)."""
    feed = dict(batch) if isinstance(batch, dict) else {"input_ids": batch}
    device = next(model.parameters()).device
    feed = {k: v.to(device) for k, v in feed.items()}
    if adapter_for(model).causal:
        feed["use_cache"] = False
    return feed


def blocks_of(model: nn.Module) -> tuple[nn.ModuleList, str]:
    """The model's block list and its dotted path (any family the shared adapters know)."""
    path = adapter_for(model).blocks_path
    return model.get_submodule(path), path


@torch.no_grad()
def model_block_influence(model: nn.Module, batches: Iterable) -> torch.Tensor:
    """Block Influence BI_i = 1 − E_t[cos(x_t^(i), x_t^(i+1))] of every block over all calibration tokens
    (ShortGPT eq. 2; Minitron's depth score too)."""
    blocks, _ = blocks_of(model)
    cos_sum = torch.zeros(len(blocks), dtype=torch.float64)
    count = torch.zeros(len(blocks), dtype=torch.float64)

    def hook(i):
        def fn(_m, args, kwargs, out):
            x_in = args[0] if args else kwargs["hidden_states"]
            x_out = out[0] if isinstance(out, tuple) else out
            a = x_in.reshape(-1, x_in.shape[-1]).double()
            b = x_out.reshape(-1, x_out.shape[-1]).double()
            cos_sum[i] += torch.nn.functional.cosine_similarity(a, b, dim=-1).sum()
            count[i] += a.shape[0]

        return fn

    handles = [b.register_forward_hook(hook(i), with_kwargs=True) for i, b in enumerate(blocks)]
    try:
        for batch in batches:
            model(**model_inputs(model, batch))
    finally:
        for h in handles:
            h.remove()
    return 1 - cos_sum / count
