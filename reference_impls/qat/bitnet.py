"""BitNet b1.58: "The Era of 1-bit LLMs: All Large Language Models are in 1.58 Bits" (Ma, Wang, Ma,
Wang, Wang, Huang, Dong, Wang, Xue, Wei; arXiv 2402.17764); record `bitnet-b158`.

Every linear of the blocks is a BitLinear trained from scratch: latent float weights W, used as
ternary W̃ = RoundClip(W/γ, −1, 1)·γ with the absmean scale γ = mean|W| (eqs. 1-3), and inputs
quantized per token to 8 bits with the absmax scale, x̃ = clamp(round(x·127/max|x|), −128, 127)·max|x|/127;
both with straight-through gradients, so the latent weights train in full precision. The model keeps
the LLaMA components (RMSNorm, SwiGLU, rotary embeddings, no biases); embeddings and head stay 16-bit.

Implemented (fidelity: simplified): `absmean_ternary` and `absmax_int8` as in the authors' "Training
Tips, Code and FAQ" (the scale clamped at 1e-5 rather than γ + ε; a parameter-free RMSNorm in front of
the activation quantizer, as that code's BitLinear does), BitLinear with STE, trained from scratch on
windows of the project's training split at tiny scale, beside a full-precision model of the same
architecture, same initialisation, data, steps and learning-rate schedule (`perplexity_fp_same_steps`);
the runner's `perplexity` is the BitNet model's and its `perplexity_fp` the project's pretrained model.
Storage: ternary weights packed five to a byte (3⁵ = 243 ≤ 256: 1.6 bits) + one 16-bit γ per matrix.
Not implemented: the paper's scale (0.7-70B parameters, 100B tokens), its two-stage learning-rate and
weight-decay schedule, and ternary kernels (here W̃ is a float tensor of three values).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from reference_impls.common import corpus, data
from reference_impls.common.fake_quant import swap_model_linears
from reference_impls.common.registry import Option, register
from reference_impls.common.training import TrainConfig, causal_lm_loss, make_student, train


# ---------------------------------------------------------------- pure core
def absmean_ternary(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(W̃ in {−1, 0, +1} (same shape, float), γ = mean|W| (scalar)): eqs. 1-3."""
    gamma = w.abs().mean().clamp(min=1e-5)
    return (w / gamma).round().clamp(-1, 1), gamma


def absmax_int8(x: torch.Tensor) -> torch.Tensor:
    """Per-token 8-bit absmax fake quantization of activations (..., in)."""
    scale = 127.0 / x.abs().amax(-1, keepdim=True).clamp(min=1e-5)
    return (x * scale).round().clamp(-128, 127) / scale


class BitLinear(nn.Module):
    """y = absmax_int8(RMSNorm(x)) · (γ·W̃)ᵀ with straight-through gradients to x and the latent W."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone())  # latent full-precision weight (out, in)
        self.out_features, self.in_features = weight.shape

    def ternary(self) -> tuple[torch.Tensor, torch.Tensor]:
        return absmean_ternary(self.weight.detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.rms_norm(x, (self.in_features,), eps=1e-6)
        x_q = x + (absmax_int8(x) - x).detach()
        w = self.weight
        t, gamma = absmean_ternary(w)
        w_q = w + (t * gamma - w).detach()
        return nn.functional.linear(x_q, w_q.to(x_q.dtype))


def training_windows(loaded, *, seq_len: int, every: int = 8) -> torch.Tensor:
    """Windows of every `every`-th file of the training split (the part the project's LM learnt from;
    a subset so that tokenizing it takes seconds), (n, seq_len)."""
    stream = data.token_stream(loaded.tokenizer, corpus.split_texts("train")[::every])
    n = stream.numel() // seq_len
    return stream[: n * seq_len].view(n, seq_len)


OPTIONS = {
    "hidden_size": Option(128, "width of both from-scratch models"),
    "layers": Option(2, "decoder layers of both models"),
    "max_steps": Option(60, "training steps of each model (the same for both)"),
    "time_budget": Option(0.0, "wall-clock limit per model in seconds (0: none; a limit can end the two "
                                "models at different steps)"),
    "lr": Option(3e-3, "peak learning rate of both models (AdamW, warm-up, cosine)"),
    "seq_len": Option(128, "training window length"),
    "batch_size": Option(8, "windows per step"),
}


@register(
    "bitnet", family="qat", papers=["bitnet-b158"], fidelity="simplified",
    summary="BitNet b1.58 from scratch (ternary absmean weights, 8-bit activations) vs same-size FP16",
    options=OPTIONS, bench=[{}], bench_models=("causal",),
)
def run_bitnet(ctx, *, hidden_size, layers, max_steps, time_budget, lr, seq_len, batch_size) -> dict:
    if hidden_size < 32 or hidden_size % 32:
        raise ValueError(f"--hidden-size must be a positive multiple of 32, got {hidden_size}")
    if layers < 1 or max_steps < 1 or batch_size < 1 or seq_len < 2 or time_budget < 0 or not lr > 0:
        raise ValueError("--layers, --max-steps, --batch-size must be >= 1, --seq-len >= 2, "
                         "--time-budget >= 0, --lr > 0")
    fp = make_student(ctx.model, num_layers=layers, hidden_size=hidden_size,
                      intermediate_size=3 * hidden_size, num_attention_heads=hidden_size // 32,
                      init="random", seed=ctx.seed)
    bit = copy.deepcopy(fp)  # the same initialisation
    linears = swap_model_linears(bit, ctx.adapter, lambda _n, w, _old: BitLinear(w))
    windows = training_windows(ctx.loaded, seq_len=seq_len)
    g = torch.Generator().manual_seed(ctx.seed)
    order = torch.randint(0, windows.shape[0], (max_steps, batch_size), generator=g)

    def batch_at(step: int) -> dict:
        return {"input_ids": windows[order[step]]}

    before = ctx.heldout_perplexity(bit)
    cfg = TrainConfig(max_steps=max_steps, time_budget=time_budget or None, lr=lr,
                      warmup_steps=max(1, max_steps // 10), weight_decay=0.1, seed=ctx.seed)
    runs = {}
    for name, model in (("fp", fp), ("bitnet", bit)):
        model.train()
        runs[name] = train(model.parameters(), causal_lm_loss(model), batch_at, cfg, device=ctx.device)
        model.eval()
    metrics = {"perplexity_before": before, "perplexity_fp_same_steps": ctx.heldout_perplexity(fp),
               "trainable_params": sum(p.numel() for p in bit.parameters()), "bits": 1.58,
               "training_tokens": runs["bitnet"].steps * batch_size * seq_len,
               **runs["bitnet"].summary("train"), **runs["fp"].summary("train_fp")}
    for name, m in linears.items():
        ctx.ledger.add(name, m.weight.numel(), 8 * math.ceil(m.weight.numel() / 5) + 16)
    metrics["zero_fraction"] = sum(float((m.ternary()[0] == 0).sum()) for m in linears.values()) / \
        sum(m.weight.numel() for m in linears.values())
    ctx.loaded.model = bit  # the runner evaluates and counts the BitNet model
    return metrics
