"""GQA conversion: "GQA: Training Generalized Multi-Query Transformer Models from Multi-Head Checkpoints"
(Ainslie, Lee-Thorp, de Jong, Zemlyanskiy, Lebrón, Sanghai; arXiv 2305.13245, EMNLP 2023); catalog
record `gqa`.

The cache holds one key and one value head per KV head, so fewer KV heads is a smaller cache for every
token. GQA converts a checkpoint to G KV heads by **mean-pooling** the key and value projection heads of
each group (the paper's Figure 1, chosen over keeping the first head or a random init: Figure 4), then
**uptrains** the converted model with its pre-training objective for a small fraction (α = 5%) of the
original steps. Here the model already has 2 KV heads (query heads 0-3 use KV head 0, 4-7 KV head 1,
transformers' contiguous grouping); `--kv-heads 1` pools both into one, i.e. multi-query attention.

Implemented (fidelity: exact for the conversion, simplified for uptraining): `mean_pool_kv_heads` on
k_proj / v_proj weights (and biases), the attention modules' group count and the config updated;
uptraining of all parameters with the shared training loop (next-token loss on the calibration
windows, `--max-steps` / `--time-budget`), standing in for the paper's 5% of pre-training steps on the
pre-training mixture. Reported: `perplexity_before` (right after pooling, before uptraining; the runner's
`perplexity` is after), KV bytes per token before/after (`full_cache_bytes` of the two configs), and
the KV metrics of `measure_on_heldout` with the full cache on the converted model, with
`next_token_kl` and `token_match_rate` taken against the original (unconverted) model.
Not implemented: the T5 encoder-decoder setting of the paper (decoder self- and cross-attention).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from reference_impls.common import data, evaluate
from reference_impls.common.generation import (
    KeepAll,
    full_cache_bytes,
    generate,
    kl_and_perplexity,
    measure_on_heldout,
    teacher_forced_logprobs,
)
from reference_impls.common.registry import Option, register
from reference_impls.common.training import TrainConfig, causal_lm_loss, cycle, train


def mean_pool_kv_heads(weight: torch.Tensor, *, head_dim: int, kv_heads: int) -> torch.Tensor:
    """(old_kv_heads·head_dim, in) → (kv_heads·head_dim, in): new head i = mean of old heads i·r … i·r+r−1.

    Works for a bias too ((old_kv_heads·head_dim,)). Contiguous groups keep query head q with the KV head
    that the pooled group served: old head q // g_old lies in new group q // (g_old·r).
    """
    old = weight.shape[0] // head_dim
    if old % kv_heads:
        raise ValueError(f"{kv_heads} KV heads must divide the model's {old}")
    r = old // kv_heads
    heads = weight.reshape(kv_heads, r, head_dim, *weight.shape[1:])  # (new, r, head_dim, [in])
    return heads.mean(1).reshape(kv_heads * head_dim, *weight.shape[1:])


def _pooled_linear(linear: nn.Linear, *, head_dim: int, kv_heads: int) -> nn.Linear:
    new = nn.Linear(linear.in_features, kv_heads * head_dim, bias=linear.bias is not None,
                    device=linear.weight.device, dtype=linear.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(mean_pool_kv_heads(linear.weight, head_dim=head_dim, kv_heads=kv_heads))
        if linear.bias is not None:
            new.bias.copy_(mean_pool_kv_heads(linear.bias, head_dim=head_dim, kv_heads=kv_heads))
    return new


def convert_to_gqa(model: nn.Module, *, kv_heads: int) -> nn.Module:
    """Mean-pool every attention's k_proj / v_proj to `kv_heads` heads, in place (Llama-style models)."""
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    if cfg.num_attention_heads % kv_heads:
        raise ValueError(f"--kv-heads {kv_heads} must divide the {cfg.num_attention_heads} query heads")
    for layer in model.model.layers:
        attn = layer.self_attn
        attn.k_proj = _pooled_linear(attn.k_proj, head_dim=head_dim, kv_heads=kv_heads)
        attn.v_proj = _pooled_linear(attn.v_proj, head_dim=head_dim, kv_heads=kv_heads)
        attn.num_key_value_groups = cfg.num_attention_heads // kv_heads  # repeat_kv in eager / SDPA
    cfg.num_key_value_heads = kv_heads
    return model


OPTIONS = {
    "kv_heads": Option(1, "KV heads after conversion (1 = multi-query attention)"),
    "max_steps": Option(100, "uptraining steps (0: conversion only)"),
    "time_budget": Option(0.0, "uptraining wall-clock limit in seconds (0: none)"),
    "lr": Option(3e-4, "uptraining learning rate"),
    "windows": Option(4, "held-out windows measured (batch)"),
    "prefill": Option(128, "prompt tokens before generation / teacher forcing"),
    "new_tokens": Option(128, "tokens generated per prompt"),
}


@register("gqa-convert", family="kv_cache", papers=["gqa"], fidelity="simplified",
          summary="Mean-pool KV heads per group (MHA/GQA -> fewer KV heads), then uptrain",
          options=OPTIONS, bench=[{"kv_heads": 1, "max_steps": 0}, {"kv_heads": 1, "max_steps": 200}],
          bench_models=("causal",))
def run_gqa_convert(ctx, *, kv_heads, max_steps, time_budget, lr, windows, prefill, new_tokens) -> dict:
    model = ctx.model
    original = copy.deepcopy(model).eval()
    before_bytes = full_cache_bytes(model.config, tokens=1)
    convert_to_gqa(model, kv_heads=kv_heads)
    held_out = data.heldout_windows(ctx.loaded)
    metrics = {"perplexity_before": evaluate.perplexity(model, held_out),
               "kv_bytes_per_token_before": before_bytes,
               "kv_bytes_per_token_after": full_cache_bytes(model.config, tokens=1)}
    if max_steps > 0:
        model.train()
        result = train(model.parameters(), causal_lm_loss(model), cycle(ctx.calibration),
                       TrainConfig(max_steps=max_steps, time_budget=time_budget or None, lr=lr,
                                   seed=ctx.seed))
        model.eval()
        metrics.update(result.summary("uptrain"))
    metrics.update(measure_on_heldout(ctx, KeepAll(), windows=windows, prefill=prefill,
                                      new_tokens=new_tokens))
    # against the original model: the conversion's own cost (KeepAll against itself would be zero)
    text = data.heldout_windows(ctx.loaded, max_windows=windows).to(ctx.device)
    ref = teacher_forced_logprobs(original, text, None, prefill=prefill)
    ours = teacher_forced_logprobs(model, text, None, prefill=prefill)
    kl, _ = kl_and_perplexity(ref, ours, text[:, prefill:])
    ref_tokens = generate(original, text[:, :prefill], KeepAll(), max_new_tokens=new_tokens).tokens
    ours_tokens = generate(model, text[:, :prefill], KeepAll(), max_new_tokens=new_tokens).tokens
    metrics.update(next_token_kl=kl, token_match_rate=float((ref_tokens == ours_tokens).float().mean()),
                   kv_bytes_full_original=before_bytes * text.shape[0] * (prefill + new_tokens - 1))
    return metrics

