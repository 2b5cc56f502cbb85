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
- recovery: LoRA (rank `lora_rank`, on all seven projections) trained for `recovery_steps` steps on
  the calibration windows, then merged into the weights, so the result is a plain smaller model.
Simplified: the repository traces dependencies automatically, offers vector-wise, second-order and
element-wise variants, and recovers on 50k Alpaca instructions for two epochs; here recovery is a
few steps on the calibration text, and the groups are hand-written for Llama.
Fidelity: simplified.
"""

from __future__ import annotations

import torch
from torch import nn

from reference_impls.pruning.structure import (
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


class LoRALinear(nn.Module):
    """y = W x + (α/r)·B A x with W frozen; `merge` folds the update into W."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        self.base, self.scale = base, alpha / rank
        self.A = nn.Parameter(
            torch.randn(rank, base.in_features, dtype=base.weight.dtype) / base.in_features**0.5
        )
        self.B = nn.Parameter(torch.zeros(base.out_features, rank, dtype=base.weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.A.T @ self.B.T) * self.scale

    def merge(self) -> nn.Linear:
        self.base.weight.data += (self.B @ self.A).data * self.scale
        return self.base


PROJECTIONS = (
    ("self_attn", ("q_proj", "k_proj", "v_proj", "o_proj")),
    ("mlp", ("gate_proj", "up_proj", "down_proj")),
)


def lora_recover(
    model: nn.Module, batches: list[dict], *, steps: int, rank: int = 8, lr: float = 3e-4
) -> list[float]:
    """Train LoRA adapters on the calibration windows for `steps` steps, merge them; return losses."""
    layers = decoder_layers(model)
    for p in model.parameters():
        p.requires_grad_(False)
    adapters = []
    for layer in layers:
        for owner_name, names in PROJECTIONS:
            owner = getattr(layer, owner_name)
            for name in names:
                lora = LoRALinear(getattr(owner, name), rank, alpha=2 * rank)
                setattr(owner, name, lora)
                adapters.append((owner, name, lora))
    params = [p for _, _, lora in adapters for p in (lora.A, lora.B)]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    losses = []
    model.train()
    device = next(model.parameters()).device
    for step in range(steps):
        ids = batches[step % len(batches)]["input_ids"].to(device)
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    model.eval()
    for owner, name, lora in adapters:
        setattr(owner, name, lora.merge())
    for p in model.parameters():
        p.requires_grad_(True)
    return losses


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
from reference_impls.common.registry import Option, register  # noqa: E402
from reference_impls.pruning.flap import dense_linear_sizes, record_structured  # noqa: E402
from reference_impls.pruning.latency import LatencyProbe  # noqa: E402
from reference_impls.pruning.structure import count_params  # noqa: E402


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
    },
)
def run_llm_pruner(ctx, *, ratio, skip_layers, gradient_batches, recovery_steps, lora_rank) -> dict:
    if ctx.loaded.kind != "causal":
        raise ValueError("llm-pruner needs a causal LM: its importance is the gradient of the LM loss")
    sizes = dense_linear_sizes(ctx)
    params_dense = count_params(ctx.model)
    probe = LatencyProbe(ctx.model)
    batches = ctx.calibration
    llm_pruner_prune(ctx.model, batches[:gradient_batches], ratio=ratio, skip_layers=skip_layers)
    losses = lora_recover(ctx.model, batches, steps=recovery_steps, rank=lora_rank) if recovery_steps else []
    record_structured(ctx, sizes)
    out = {"params_removed": 1 - count_params(ctx.model) / params_dense}
    if losses:
        out.update(recovery_loss_first=losses[0], recovery_loss_last=losses[-1])
    out.update(probe.metrics(ctx.model))
    return out
