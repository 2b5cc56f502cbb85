"""LLM-Pruner: "LLM-Pruner: On the Structural Pruning of Large Language Models" (Ma, Fang, Wang;
arXiv 2305.11627).

Implemented (simplified), for Llama-family decoders:
- dependency groups of coupled structures, written out for the Llama block rather than discovered by
  tracing the graph: a key/value group of attention heads (its query, key and value rows and the
  matching o_proj columns) and an MLP channel (its gate and up rows and down column);
- first-order Taylor importance of each group, I = Σ_{w in group} |w · ∂L/∂w| (element-wise, summed
  over the group: the repository's `--pruner_type taylor --taylor param_first` with sum
  aggregation), the gradient of the language-modelling loss accumulated over calibration batches;
- the same ratio of KV groups and of MLP channels removed in every pruned layer, the first and last
  `skip_layers` layers left whole (the repository prunes layers 4-30 of LLaMA-7B's 32), physically;
- recovery: LoRA from `peft` (rank `lora_rank`, on all seven projections) trained with the shared
  loop (`common/training.py`: AdamW, warm-up + cosine, clipping) for `recovery_steps` steps or
  `time_budget` seconds on the calibration windows, then merged with peft's `merge_and_unload`, so the
  result is a plain smaller model.
Simplified: the repository traces dependencies automatically, offers vector-wise, second-order and
element-wise variants, and recovers on 50k Alpaca instructions for two epochs; here recovery is a
few steps on the calibration text, and the groups are hand-written for Llama.
Fidelity: simplified.
"""

from __future__ import annotations

import torch
from torch import nn

from reference_impls.common.training import (
    TrainConfig,
    TrainResult,
    add_lora,
    causal_lm_loss,
    cycle,
    merge_lora,
    train,
)
from reference_impls.pruning._structure import (
    decoder_layers,
    keep_attention_groups,
    keep_mlp_channels,
    kv_groups,
)


def taylor_group_importance(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(importance per KV group, importance per MLP channel) from the gradients stored on the weights."""
    attn, mlp = layer.self_attn, layer.mlp
    n_kv, q_per_kv, hd = kv_groups(attn)

    def salience(lin: nn.Linear) -> torch.Tensor:
        return (lin.weight.data * lin.weight.grad).abs()  # (out, in)

    q = salience(attn.q_proj).sum(1).reshape(n_kv, q_per_kv * hd).sum(1)
    k = salience(attn.k_proj).sum(1).reshape(n_kv, hd).sum(1)
    v = salience(attn.v_proj).sum(1).reshape(n_kv, hd).sum(1)
    o = salience(attn.o_proj).sum(0).reshape(n_kv, q_per_kv * hd).sum(1)
    channel = salience(mlp.gate_proj).sum(1) + salience(mlp.up_proj).sum(1) + salience(mlp.down_proj).sum(0)
    return q + k + v + o, channel


def accumulate_gradients(model: nn.Module, batches: list[dict]) -> None:
    """Sum of the LM loss gradients over the batches, left in `.grad` of every weight."""
    model.zero_grad(set_to_none=True)
    for batch in batches:
        ids = batch["input_ids"].to(next(model.parameters()).device)
        model(input_ids=ids, labels=ids, use_cache=False).loss.backward()


def lowest(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    """Indices to keep: all but the floor(ratio·n) lowest scores (at least one kept)."""
    n_remove = min(int(scores.numel() * ratio), scores.numel() - 1)
    return torch.sort(torch.argsort(scores, descending=True)[: scores.numel() - n_remove]).values


def lora_recover(model: nn.Module, batches: list[dict], *, steps: int, rank: int = 8, lr: float = 3e-4,
                 seed: int = 0, time_budget: float | None = None) -> TrainResult:
    """LoRA adapters (peft, on every block linear, alpha = 2·rank) trained on the calibration windows
    with the shared loop, then merged into the pruned weights; returns the loop's record."""
    peft_model = add_lora(model, rank=rank, alpha=2 * rank)
    cfg = TrainConfig(max_steps=steps, time_budget=time_budget, lr=lr, warmup_steps=max(1, steps // 10),
                      seed=seed)
    result = train(peft_model.parameters(), causal_lm_loss(peft_model), cycle(batches), cfg)
    merge_lora(peft_model)  # folds B·A·alpha/r into the base weights of `model`, in place
    return result


def llm_pruner_prune(
    model: nn.Module, batches: list[dict], *, ratio: float = 0.2, skip_layers: int = 1
) -> None:
    """Remove the lowest-Taylor-importance KV groups and MLP channels, `ratio` of each per layer."""
    layers = decoder_layers(model)
    with torch.enable_grad():
        accumulate_gradients(model, batches)
    for i, layer in enumerate(layers):
        if i < skip_layers or i >= len(layers) - skip_layers:
            continue
        group_imp, channel_imp = taylor_group_importance(layer)
        keep_attention_groups(layer.self_attn, lowest(group_imp, ratio))
        keep_mlp_channels(layer.mlp, lowest(channel_imp, ratio))
    model.zero_grad(set_to_none=True)


# ---------------------------------------------------------------- model-level entry
from reference_impls.common.pruning import dense_linear_sizes, record_structured  # noqa: E402
from reference_impls.common.registry import Option, register  # noqa: E402
from reference_impls.pruning._latency import LatencyProbe  # noqa: E402
from reference_impls.pruning._structure import count_params  # noqa: E402


@register(
    "llm-pruner",
    family="pruning",
    papers=["llm-pruner"],
    bench=[{"ratio": 0.2}],
    bench_models=("causal",),
    fidelity="simplified",
    summary="LLM-Pruner: Taylor importance of coupled head/channel groups, removal, short LoRA recovery",
    options={
        "ratio": Option(0.2, "fraction of KV groups and of MLP channels removed in each pruned layer"),
        "skip_layers": Option(1, "first and last layers left whole"),
        "gradient_batches": Option(4, "calibration batches whose loss gradients give the importance"),
        "recovery_steps": Option(20, "LoRA recovery steps on the calibration windows (0 = none)"),
        "lora_rank": Option(8, "rank of the recovery adapters"),
        "time_budget": Option(0.0, "wall-clock limit of the recovery in seconds (0 = none)"),
    },
)
def run_llm_pruner(
    ctx, *, ratio, skip_layers, gradient_batches, recovery_steps, lora_rank, time_budget
) -> dict:
    if ctx.loaded.kind != "causal":
        raise ValueError("llm-pruner needs a causal LM: its importance is the gradient of the LM loss")
    sizes = dense_linear_sizes(ctx)
    params_dense = count_params(ctx.model)
    probe = LatencyProbe(ctx.model)
    batches = ctx.calibration
    llm_pruner_prune(ctx.model, batches[:gradient_batches], ratio=ratio, skip_layers=skip_layers)
    recovery = lora_recover(ctx.model, batches, steps=recovery_steps, rank=lora_rank, seed=ctx.seed,
                            time_budget=time_budget or None) if recovery_steps else None
    record_structured(ctx, sizes)
    out = {"params_removed": 1 - count_params(ctx.model) / params_dense}
    if recovery is not None:
        out.update(recovery.summary("recovery"))
    out.update(probe.metrics(ctx.model))
    return out
