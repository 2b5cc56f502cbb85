"""FLAP: "Fluctuation-based Adaptive Structured Pruning for Large Language Models" (An, Zhao, Yu,
Tang, Wang; arXiv 2312.11983).

Implemented, for Llama-family decoders:
- the fluctuation metric WIFV (eq. 5 of the paper): for input channel j of an output projection
  (o_proj, down_proj), S_j = Var(X[:, j]) · ‖W[:, j]‖², the sample variance of the channel over
  calibration tokens times its squared weight column norm; the official code squares the attention
  scores once more, and so do we;
- adaptive structure search "AL-AM": scores standardized within each layer and module type, head
  scores averaged over the head's channels, then one global threshold over heads and MLP channels
  weighted by their parameter cost, so that the removed parameters reach `pruning_ratio` of the
  decoder linears;
- baseline bias compensation (eq. 7): the removed channels' mean input times their weights becomes
  a bias of the output projection, so the layer's mean output is preserved;
- physical removal (smaller q/k/v/o and gate/up/down).
Grouped-query attention: heads are removed by whole key/value groups (their score is the mean over
the group's query heads), which the official code, written for multi-head attention, never needs.
Statistics are gathered on the dense model, as in the official code.
Not implemented: the IFV/WIFN metrics and the uniform structures (UL-UM, UL-MM, AL-MM).
Fidelity: exact for AL-AM with WIFV on multi-head attention; KV-group handling is ours.
"""

from __future__ import annotations

import torch

from reference_impls.pruning._structure import (
    add_output_bias,
    keep_attention_groups,
    keep_mlp_channels,
    kv_groups,
)


def wifv(weight_out: torch.Tensor, input_var: torch.Tensor) -> torch.Tensor:
    """Weighted input feature variance of each input channel of an output projection (out, in)."""
    return input_var.float() * weight_out.float().pow(2).sum(dim=0)  # (in,)


def standardize(x: torch.Tensor) -> torch.Tensor:
    return (x - x.mean()) / x.std().clamp_min(1e-12)


def group_scores(channel_score: torch.Tensor, n_kv: int, q_per_kv: int, head_dim: int) -> torch.Tensor:
    """Attention channel scores (n_heads·head_dim,) -> one score per KV group (n_kv,)."""
    per_head = standardize(channel_score**2).reshape(n_kv * q_per_kv, head_dim).mean(dim=1)
    return per_head.reshape(n_kv, q_per_kv).mean(dim=1)


def global_keep(
    attn: list[torch.Tensor], mlp: list[torch.Tensor], group_cost: int, channel_cost: int, ratio: float
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Boolean keep masks per layer: the highest-scoring units whose cost fills (1 - ratio) of the total.

    Every layer keeps at least its best KV group and its best MLP channel."""
    scores = torch.cat([torch.cat(attn), torch.cat(standardize_all(mlp))])
    costs = torch.cat([torch.full((sum(a.numel() for a in attn),), float(group_cost)),
                       torch.full((sum(m.numel() for m in mlp),), float(channel_cost))])  # fmt: skip
    order = torch.argsort(scores, descending=True)
    budget = (1 - ratio) * costs.sum()
    kept_cost = torch.cumsum(costs[order], 0)
    n_keep = int(torch.argmin((kept_cost - budget).abs())) + 1
    keep = torch.zeros_like(scores, dtype=torch.bool)
    keep[order[:n_keep]] = True
    attn_keep, mlp_keep = [], []
    offset = 0
    for a in attn:
        k = keep[offset : offset + a.numel()].clone()
        k[a.argmax()] = True
        attn_keep.append(k)
        offset += a.numel()
    for m in standardize_all(mlp):
        k = keep[offset : offset + m.numel()].clone()
        k[m.argmax()] = True
        mlp_keep.append(k)
        offset += m.numel()
    return attn_keep, mlp_keep


def standardize_all(xs: list[torch.Tensor]) -> list[torch.Tensor]:
    return [standardize(x) for x in xs]


def compensated_bias(weight_out: torch.Tensor, input_mean: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Bias that replaces the removed input channels by their mean contribution: W[:, ¬keep]·E[x¬keep]."""
    return weight_out.float()[:, ~keep] @ input_mean.float()[~keep]  # (out,)


def flap_prune_layer(layer, attn_keep: torch.Tensor, mlp_keep: torch.Tensor, attn_mean, mlp_mean) -> None:
    """Remove the unkept KV groups and MLP channels of one decoder layer, compensating with biases."""
    attn = layer.self_attn
    n_kv, q_per_kv, hd = kv_groups(attn)
    channel_keep = attn_keep.repeat_interleave(q_per_kv * hd)  # (n_heads·hd,)
    o_bias = compensated_bias(attn.o_proj.weight.data, attn_mean, channel_keep)
    down_bias = compensated_bias(layer.mlp.down_proj.weight.data, mlp_mean, mlp_keep)
    keep_attention_groups(attn, attn_keep.nonzero().flatten())
    keep_mlp_channels(layer.mlp, mlp_keep.nonzero().flatten())
    add_output_bias(attn.o_proj, o_bias)
    add_output_bias(layer.mlp.down_proj, down_bias)


# ---------------------------------------------------------------- model-level entry
from reference_impls.common.pruning import dense_linear_sizes, record_structured  # noqa: E402
from reference_impls.common.registry import Option, register  # noqa: E402
from reference_impls.pruning._latency import LatencyProbe  # noqa: E402
from reference_impls.pruning._structure import count_params, decoder_layers  # noqa: E402


@register(
    "flap",
    family="pruning",
    papers=["flap"],
    bench=[{"pruning_ratio": 0.2}],
    bench_models=("causal",),
    fidelity="exact",
    summary=(
        "FLAP: fluctuation-based head/channel removal with a global adaptive structure and bias compensation"
    ),
    options={"pruning_ratio": Option(0.2, "fraction of the decoder linears' parameters to remove")},
)
def run_flap(ctx, *, pruning_ratio: float) -> dict:
    layers = decoder_layers(ctx.model)
    sizes = dense_linear_sizes(ctx)
    params_dense = count_params(ctx.model)
    probe = LatencyProbe(ctx.model)
    attn_scores, mlp_scores, attn_means, mlp_means = [], [], [], []

    def measure(block):  # statistics only: the walk leaves every block dense
        stats = block.stats  # layerwise.LinearStats of every linear: mean and unbiased variance
        attn = block.block.self_attn
        n_kv, q_per_kv, hd = kv_groups(attn)
        attn_scores.append(
            group_scores(wifv(attn.o_proj.weight.data, stats["self_attn.o_proj"].act_var), n_kv, q_per_kv, hd)
        )
        mlp_scores.append(wifv(block.block.mlp.down_proj.weight.data, stats["mlp.down_proj"].act_var))
        attn_means.append(stats["self_attn.o_proj"].act_mean)
        mlp_means.append(stats["mlp.down_proj"].act_mean)

    ctx.walk(measure, stats=("act_mean", "act_var"))
    attn0 = layers[0].self_attn
    n_kv, q_per_kv, hd = kv_groups(attn0)
    hidden = attn0.q_proj.in_features
    attn_keep, mlp_keep = global_keep(
        attn_scores, mlp_scores, hidden * hd * (2 * q_per_kv + 2), 3 * hidden, pruning_ratio
    )
    for i, layer in enumerate(layers):
        flap_prune_layer(layer, attn_keep[i], mlp_keep[i], attn_means[i], mlp_means[i])
    record_structured(ctx, sizes)
    return {
        "params_removed": 1 - count_params(ctx.model) / params_dense,
        "kv_groups_kept": [int(k.sum()) for k in attn_keep],
        "mlp_channels_kept": [int(k.sum()) for k in mlp_keep],
        **probe.metrics(ctx.model),
    }
