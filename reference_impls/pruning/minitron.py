"""Minitron: "Compact Language Models via Pruning and Knowledge Distillation" (Muralidharan, Sreenivas,
Joshi, Chochowski, Patwary, Shoeybi, Catanzaro, Kautz, Molchanov; arXiv 2407.14679), with "LLM Pruning
and Distillation in Practice: The Minitron Approach" (Sreenivas et al.; arXiv 2408.11796). Catalog
records `minitron`, `minitron-approach`.

Implemented, for Llama-family decoders:
- activation-based importance from one forward pass of the dense model over the calibration windows
  (2407.14679, "importance analysis"): MLP neurons from the hidden activations entering `down_proj`,
  attention heads from the head outputs entering `o_proj`, embedding channels from the outputs of
  every RMSNorm inside the blocks (input_layernorm and post_attention_layernorm), summed over those
  norms — the hook points of NVIDIA Model Optimizer's `mcore_minitron` (the authors' released code);
- aggregation of |activation| by the mean over the sequence, then the L2 norm over the batch, the
  (batch: L2, seq: mean) pair the paper recommends and Model Optimizer computes; a head's score is the
  L2 norm of its channels' scores, as there; `mean`, `l2` and `var`, the aggregations the paper
  compares, are arguments of `channel_importance`;
- depth importance of each layer: the calibration perplexity of the model with that one layer
  skipped (`ppl`, the paper's first metric), or Block Importance, 1 − cos(input, output) (`bi`,
  ShortGPT's metric, which the paper also evaluates and Model Optimizer uses);
- trimming (§2.3): the lowest-importance layers removed, then in every remaining layer the same number
  of MLP neurons and of query heads per KV group kept (a homogeneous architecture, as Minitron's
  exported configurations), and the same embedding channels kept in every layer, the embedding, the
  final norm and the (tied) LM head; the config updated so the pruned model saves and reloads;
- retraining by logit-only distillation (the paper's recommended retraining): forward KL between the
  dense teacher's and the pruned student's next-token distributions at temperature 1, no cross-entropy
  term, through the `kd` method with alpha = 1 (its compressed-student path: the dense model reloaded
  as teacher, the pruned model trained in place, and the same pruned model trained for the same steps
  with cross-entropy alone as the `perplexity_no_distill` baseline).
Not implemented: the paper's architecture search over candidate widths/depths with a short
retraining of each (here the user gives the axes and the ratio), iterative prune-distill rounds,
the Minitron approach's teacher correction (fine-tuning the teacher on the distillation data) and its
choice of contiguous layer blocks by downstream accuracy; retraining is minutes on CPU, not 94B tokens.
KV groups (query groups) are never removed: with the project model's 2 groups one group is half the
heads; Model Optimizer prunes them only when asked (`num_query_groups`).
Fidelity: simplified.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from reference_impls.pruning._structure import (
    decoder_layers,
    keep_hidden_channels,
    keep_mlp_channels,
    keep_query_heads,
    kv_groups,
    model_block_influence,
    model_inputs,
    remove_layers,
)


def aggregate(x: torch.Tensor, dim: int, how: str) -> torch.Tensor:
    """The paper's aggregations of activations along one dimension: mean, L2 norm or variance."""
    if how == "mean":
        return x.mean(dim)
    if how == "l2":
        return x.pow(2).sum(dim).sqrt()
    if how == "var":
        return x.var(dim, unbiased=False)
    raise ValueError(f"aggregation must be mean, l2 or var, got {how!r}")


def channel_importance(acts: torch.Tensor, *, seq: str = "mean", batch: str = "l2") -> torch.Tensor:
    """F_i = agg_batch(agg_seq(|X[b, s, i]|)) of activations (batch, seq, n) -> (n,)."""
    return aggregate(aggregate(acts.abs().double(), 1, seq), 0, batch)


def head_importance(channel_scores: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Scores of the concatenated head outputs (n_heads·head_dim,) -> one L2 norm per head (n_heads,)."""
    return channel_scores.reshape(-1, head_dim).norm(dim=1)


def top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k highest scores along the last dimension, ascending."""
    return torch.topk(scores, k, dim=-1).indices.sort(dim=-1).values


def n_kept(n: int, ratio: float) -> int:
    """Units kept when `ratio` of n is removed: n − floor(n·ratio), at least one."""
    return max(1, n - int(n * ratio))


@dataclass
class Importance:
    heads: list[torch.Tensor]  # per layer (n_heads,)
    neurons: list[torch.Tensor]  # per layer (intermediate,)
    embedding: torch.Tensor  # (hidden,)
    layers: torch.Tensor | None = None  # (n_layers,) depth importance, higher = keep


@torch.no_grad()
def width_importance(model: nn.Module, batches: Iterable, *, seq: str = "mean",
                     batch: str = "l2") -> Importance:
    """One forward pass of the dense model: per-sample sequence aggregates of the activations entering
    o_proj and down_proj and leaving the block norms, then the batch aggregate over all samples."""
    layers = decoder_layers(model)
    per_sample: dict[str, list[torch.Tensor]] = {}

    def add(key: str, x: torch.Tensor) -> None:  # x (batch, seq, n)
        per_sample.setdefault(key, []).append(aggregate(x.abs().double(), 1, seq).cpu())

    handles = []
    for i, layer in enumerate(layers):
        handles += [
            layer.self_attn.o_proj.register_forward_pre_hook(lambda m, a, i=i: add(f"heads.{i}", a[0])),
            layer.mlp.down_proj.register_forward_pre_hook(lambda m, a, i=i: add(f"neurons.{i}", a[0])),
            layer.input_layernorm.register_forward_hook(lambda m, a, o, i=i: add(f"emb.{i}.att", o)),
            layer.post_attention_layernorm.register_forward_hook(lambda m, a, o, i=i: add(f"emb.{i}.mlp", o)),
        ]
    try:
        for b in batches:
            model(**model_inputs(model, b))
    finally:
        for h in handles:
            h.remove()
    score = {k: aggregate(torch.cat(v), 0, batch) for k, v in per_sample.items()}
    hd = layers[0].self_attn.head_dim
    return Importance(
        heads=[head_importance(score[f"heads.{i}"], hd) for i in range(len(layers))],
        neurons=[score[f"neurons.{i}"] for i in range(len(layers))],
        embedding=sum(v for k, v in score.items() if k.startswith("emb.")),
    )


@torch.no_grad()
def perplexity_without_each_layer(model: nn.Module, batches: list) -> torch.Tensor:
    """Calibration perplexity of the model with layer i skipped (its output = its input), per layer."""
    layers = decoder_layers(model)
    ppl = torch.zeros(len(layers), dtype=torch.float64)
    for i, layer in enumerate(layers):
        h = layer.register_forward_hook(
            lambda m, a, kw, out: a[0] if a else kw["hidden_states"], with_kwargs=True
        )
        nll, count = 0.0, 0
        try:
            for b in batches:
                feed = model_inputs(model, b)
                ids = feed["input_ids"]
                logits = model(**feed).logits[:, :-1].float()
                nll += F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten(), reduction="sum").item()
                count += ids[:, 1:].numel()
        finally:
            h.remove()
        ppl[i] = math.exp(nll / count)
    return ppl


def minitron_prune(model: nn.Module, imp: Importance, *, ratio: float, axes: Iterable[str]) -> dict:
    """Trim `ratio` of each axis in `axes` ("depth", "heads", "mlp", "embedding") keeping the units of
    highest importance; in place. Returns the kept sizes and the removed layers' original indices."""
    axes = set(axes)
    layers = decoder_layers(model)
    heads, neurons = list(imp.heads), list(imp.neurons)
    drop: list[int] = []
    if "depth" in axes:
        n_drop = len(layers) - n_kept(len(layers), ratio)
        drop = sorted(torch.topk(imp.layers, n_drop, largest=False).indices.tolist())
        remove_layers(model, drop)
        heads = [h for i, h in enumerate(heads) if i not in drop]
        neurons = [n for i, n in enumerate(neurons) if i not in drop]
        layers = decoder_layers(model)
    cfg = model.config
    for layer, h, n in zip(layers, heads, neurons, strict=True):
        if "heads" in axes:
            n_kv, q_per_kv, _ = kv_groups(layer.self_attn)
            keep_query_heads(layer.self_attn, top_k(h.reshape(n_kv, q_per_kv), n_kept(q_per_kv, ratio)))
        if "mlp" in axes:
            keep_mlp_channels(layer.mlp, top_k(n, n_kept(n.numel(), ratio)))
    if "heads" in axes:
        cfg.head_dim = layers[0].self_attn.head_dim  # so that it does not follow the new head count
        cfg.num_attention_heads = layers[0].self_attn.q_proj.out_features // cfg.head_dim
    cfg.intermediate_size = layers[0].mlp.gate_proj.out_features
    if "embedding" in axes:
        keep_hidden_channels(model, top_k(imp.embedding, n_kept(imp.embedding.numel(), ratio)))
    return {"removed_layers": drop, "num_hidden_layers": cfg.num_hidden_layers,
            "num_attention_heads": cfg.num_attention_heads, "intermediate_size": cfg.intermediate_size,
            "hidden_size": cfg.hidden_size}


# ---------------------------------------------------------------- model-level entry
from reference_impls.common import registry  # noqa: E402
from reference_impls.common.layerwise import block_linears  # noqa: E402
from reference_impls.common.registry import Option, register  # noqa: E402
from reference_impls.common.storage import Parts  # noqa: E402
from reference_impls.pruning._structure import count_params  # noqa: E402

AXES = {"width": ("heads", "mlp", "embedding"), "depth": ("depth",),
        "both": ("depth", "heads", "mlp", "embedding"), "heads": ("heads",), "mlp": ("mlp",),
        "embedding": ("embedding",), "mlp-embedding": ("mlp", "embedding")}


def check_options(*, ratio, max_steps, time_budget, lr, depth_metric, **_) -> None:
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"--ratio must be in [0, 1), got {ratio}")
    if max_steps < 0 or time_budget < 0 or lr <= 0:
        raise ValueError(f"--max-steps and --time-budget must be >= 0 and --lr > 0, got "
                         f"{max_steps}, {time_budget}, {lr}")


def record_ledger(ctx, dense: dict[int, dict[str, int]], kept_layers: list[int]) -> None:
    """Each remaining block linear at 16 bits per kept weight over its dense size, named as it is now
    (the `kd` stage reads these names back); parts say the values stay 16-bit, so kd accepts them."""
    path = ctx.adapter.blocks_path
    for name, m in block_linears(ctx.model, ctx.adapter):
        idx, rest = name[len(path) + 1 :].split(".", 1)  # "model.layers.3.mlp.up_proj" -> "3", "mlp.up_proj"
        ctx.ledger.add(name, dense[kept_layers[int(idx)]][rest], m.weight.numel() * 16,
                       parts=Parts(m.weight.numel(), 16), held=m.weight.numel())


@register(
    "minitron",
    family="pruning",
    papers=["minitron", "minitron-approach"],
    fidelity="simplified",
    summary="Minitron: activation-importance width/depth pruning, then logit-only KD from the dense model",
    options={
        "ratio": Option(0.25, "fraction of each pruned axis removed (layers, query heads per group, "
                              "MLP neurons, embedding channels)"),
        "axis": Option("width", "which axes: width = heads+mlp+embedding; both = width+depth",
                       choices=tuple(AXES)),
        "depth_metric": Option("ppl", "layer importance: ppl (perplexity without the layer) or bi "
                                      "(1 - cos(in, out))", choices=("ppl", "bi")),
        "max_steps": Option(100, "distillation steps after pruning (0 = prune only); the CE baseline "
                                 "runs as many"),
        "time_budget": Option(0.0, "wall-clock limit of the distillation in seconds (0 = none)"),
        "lr": Option(5e-4, "peak learning rate of the retraining (AdamW, warm-up then cosine)"),
        "batch_size": Option(8, "training windows per step"),
        "seq_len": Option(128, "tokens per training window"),
    },
    bench=[{"axis": "width", "ratio": 0.25}, {"axis": "depth", "ratio": 0.34},
           {"axis": "mlp-embedding", "ratio": 0.5}],
    bench_models=("causal",),
)
def run_minitron(ctx, *, ratio, axis, depth_metric, max_steps, time_budget, lr, batch_size, seq_len) -> dict:
    check_options(ratio=ratio, max_steps=max_steps, time_budget=time_budget, lr=lr, depth_metric=depth_metric)
    if ctx.loaded.kind != "causal":
        raise ValueError("minitron needs a causal LM (Llama family): --model causal or a Llama directory")
    axes = AXES[axis]
    layers = decoder_layers(ctx.model)
    dense = {i: {n: m.weight.numel() for n, m in ctx.adapter.linears(b).items()}
             for i, b in enumerate(layers)}
    params_dense = count_params(ctx.model)
    batches = ctx.calibration
    imp = width_importance(ctx.model, batches)
    if "depth" in axes:
        imp.layers = (perplexity_without_each_layer(ctx.model, batches) if depth_metric == "ppl"
                      else model_block_influence(ctx.model, batches))
    shape = minitron_prune(ctx.model, imp, ratio=ratio, axes=axes)
    kept_layers = [i for i in range(len(layers)) if i not in shape["removed_layers"]]
    record_ledger(ctx, dense, kept_layers)
    params = count_params(ctx.model)
    out = {**shape, "params_kept": params / params_dense, "params_dense": params_dense,
           "perplexity_pruned": ctx.heldout_perplexity(),
           # the true storage of the pruned model: every remaining parameter at 16 bits
           "weight_bytes_pruned": params * 2}
    if imp.layers is not None:
        out["layer_importance"] = [round(float(x), 5) for x in imp.layers]
    if max_steps:
        kd = registry.get("kd")  # Minitron's retraining: logit-only forward KL at T = 1 (alpha = 1)
        out.update(kd.apply(ctx, **{**kd.defaults(), "alpha": 1.0, "temperature": 1.0, "max_steps": max_steps,
                                    "time_budget": time_budget, "lr": lr, "batch_size": batch_size,
                                    "seq_len": seq_len}))
    # layers removed by depth pruning: their dense weights, none kept (added after kd, which reads the
    # ledger's names as modules of the pruned model)
    for i in shape["removed_layers"]:
        for rest, n in dense[i].items():
            ctx.ledger.add(f"removed.layers.{i}.{rest}", n, 0, parts=Parts(0, 16), held=0)
    return out
