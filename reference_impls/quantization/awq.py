"""AWQ: activation-aware weight quantization.

Paper: "AWQ: Activation-aware Weight Quantization for LLM Compression and Acceleration" (Lin, Tang,
Tang, Yang, Chen, Wang, Xiao, Dang, Gan, Han; arXiv 2306.00978), section 3.

A few input channels carry much larger activations; their weights matter most. Instead of keeping
them in higher precision, AWQ scales each input channel j of the weight up by s_j before
quantization and the activation down by s_j, Q(W·diag(s))·(diag(s)⁻¹X), which shrinks the relative
rounding error of salient channels. The scales are searched on a grid (eq. 5):

    s = s_X^α,  s_X = mean_t |X_t,:| (the average activation magnitude per channel),
    α* = argmin_{α ∈ {0, 1/20, ..., 19/20}} ‖f(W, X) - f(Q(W·diag(s))·diag(s)⁻¹, X)‖²,

with s normalised by sqrt(max(s)·min(s)) as in the official code, where f is the module whose output
the official `auto_scale_block` inspects for that group: the self-attention module for the norm ->
q/k/v scale, o_proj itself for v -> o, the MLP for the norm -> gate/up scale, down_proj itself for
up -> down (in general the innermost module holding the group's linears, or the adapter's
`InputGroup.inspect`), run on the arguments it received in the full-precision block. diag(s)⁻¹ is
folded into the operator that produces X (the preceding norm, or the preceding linear's output
rows). Then a clipping search per linear and per group picks
the weight range max|w|·(1 - i/20), i < 10, that minimises the group's output error on a sample of
512 calibration tokens (skipped for q/k, whose errors the softmax amplifies, as in the official code).

Implemented: the pure core (`awq_search_scale`, `awq_clip_search`, `awq_quantize` for one linear) and
a model-level entry running, per block of the shared layer walk: scale search on the inspected
module's output for every input group whose producer can absorb the scale (norm -> q/k/v, norm -> gate/up,
up -> down, and v -> o when their shapes match, i.e. no grouped-query attention), folding, clipping,
then round-to-nearest on the project's grid (asymmetric min-max, group 128 by default). Before
folding, each group's fold is checked to leave the block's output unchanged (it does not in post-LN
blocks such as BERT's, where the norm also feeds the residual); groups that fail are not scaled.

Not implemented / differences: the official code walks the model with the scaled but still
unquantized blocks and quantizes at the end; the shared walk here feeds the next block the output of
the already-quantized block (the GPTQ scheme). The search uses the first `search_samples`
calibration sequences for speed. No packed int4 kernels (de-quantized weights are stored in float).

Fidelity: exact for the search and clipping; the min-max grid includes zero (the project's RTN
grid), whereas the official pseudo-quantizer does not force zero into the range.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from reference_impls.common.folding import fold_is_equivalent, fold_scales
from reference_impls.common.registry import Option, register
from reference_impls.common.storage import group_width

Quantizer = Callable[[torch.Tensor], torch.Tensor]


def rtn_quantizer(*, bits: int, group_size: int, sym: bool = False) -> Quantizer:
    """The project's shared round-to-nearest grid, as a one-argument quantizer."""
    from reference_impls.quantization.rtn import rtn_quantize

    return lambda w: rtn_quantize(w, bits=bits, group_size=group_size, sym=sym)


# ---------------------------------------------------------------- pure core
def awq_scales(act_mean_abs: torch.Tensor, alpha: float) -> torch.Tensor:
    """s = s_X^α, normalised so that max(s)·min(s) = 1 (the official code's normalisation)."""
    s = act_mean_abs.float().pow(alpha).clamp(min=1e-4)
    return s / (s.max() * s.min()).sqrt()


@dataclass
class ScaleSearch:
    scales: torch.Tensor  # (in,)
    alpha: float
    errors: list[float] = field(default_factory=list)  # block error for α = 0, 1/n_grid, ...


def awq_search_scale(
    weights: list[torch.Tensor],
    act_mean_abs: torch.Tensor,
    block_error: Callable[[list[torch.Tensor]], float],
    *,
    quantize: Quantizer,
    n_grid: int = 20,
) -> ScaleSearch:
    """Grid search of α; `block_error(effective weights)` is the block's output error when the
    group's linears compute with those (out_i, in) weights (Q(W·s)/s is what they compute with)."""
    best = None
    errors = []
    for r in range(n_grid):
        alpha = r / n_grid
        s = awq_scales(act_mean_abs, alpha)
        effective = [quantize(w * s) / s for w in weights]
        errors.append(float(block_error(effective)))
        if best is None or errors[-1] < best[0]:
            best = (errors[-1], alpha, s)
    return ScaleSearch(scales=best[2], alpha=best[1], errors=errors)


def awq_clip_search(
    weight: torch.Tensor,
    x: torch.Tensor,
    *,
    quantize: Quantizer,
    group_size: int = 128,
    n_grid: int = 20,
    max_shrink: float = 0.5,
    n_sample_tokens: int = 512,
) -> torch.Tensor:
    """Per (output row, group) clipping threshold (out, n_groups) minimising the group's partial
    output error mean_t (x_t,g · (w_g - Q(clip(w_g))))² over sampled tokens."""
    out_features, in_features = weight.shape
    g = group_width(group_size, in_features, must_divide=True)
    n_groups = in_features // g
    x = x.reshape(-1, in_features)
    x = x[:: max(1, x.shape[0] // n_sample_tokens)][:n_sample_tokens].float()  # (t, in)
    xg = x.reshape(-1, n_groups, g).transpose(0, 1)  # (groups, t, g)
    w = weight.float().reshape(out_features, n_groups, g)  # (out, groups, g)

    def partial_out(wq):  # each group's contribution to every output: (groups, t, out)
        return torch.bmm(xg, wq.permute(1, 2, 0))

    org_out = partial_out(w)
    org_max = w.abs().amax(-1, keepdim=True)  # (out, groups, 1)
    best_err = torch.full((out_features, n_groups), float("inf"))
    best = org_max.squeeze(-1).clone()
    for i in range(int(max_shrink * n_grid)):
        max_val = org_max * (1 - i / n_grid)
        q = quantize(torch.clamp(w, -max_val, max_val).reshape(out_features, in_features))
        err = (partial_out(q.reshape(w.shape)) - org_out).pow(2).mean(1).T  # (out, groups)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better, max_val.squeeze(-1), best)
    return best  # (out, n_groups)


def apply_clip(weight: torch.Tensor, max_val: torch.Tensor, group_size: int) -> torch.Tensor:
    out_features, in_features = weight.shape
    g = group_width(group_size, in_features, must_divide=True)
    w = weight.reshape(out_features, -1, g)
    m = max_val[..., None]
    return torch.clamp(w, -m, m).reshape(out_features, in_features)


def awq_quantize(
    weight: torch.Tensor,
    x: torch.Tensor,
    *,
    bits: int = 4,
    group_size: int = 128,
    sym: bool = False,
    n_grid: int = 20,
    clip: bool = True,
    alpha: float | None = None,
) -> torch.Tensor:
    """AWQ for one linear whose own output is the "block": returns Q(clip(W·s))/s (out, in).

    x: calibration inputs (n, in). alpha fixes α instead of searching (alpha=0, clip=False is RTN).
    """
    quantize = rtn_quantizer(bits=bits, group_size=group_size, sym=sym)
    W = weight.float()
    X = x.reshape(-1, W.shape[1]).float()
    ref = X @ W.T

    def block_error(ws):
        return (X @ ws[0].T - ref).pow(2).mean().item()

    act = X.abs().mean(0)
    if alpha is None:
        s = awq_search_scale([W], act, block_error, quantize=quantize, n_grid=n_grid).scales
    else:
        s = awq_scales(act, alpha)
    Ws = W * s
    if clip:
        Ws = apply_clip(
            Ws,
            awq_clip_search(Ws, X / s, quantize=quantize, group_size=group_size, n_grid=n_grid),
            group_size,
        )
    return (quantize(Ws) / s).to(weight.dtype)


# ---------------------------------------------------------------- model level
def inspected_module(group) -> str:
    """Dotted name (inside the block) of the module whose output scores a group's scale, as in the
    official `auto_scale_block`: the adapter's `inspect` when set, else the innermost module holding
    all the group's linears (q/k/v -> the attention, gate/up -> the MLP, a lone linear -> itself)."""
    if group.inspect is not None:
        return group.inspect
    common = []
    for parts in zip(*(n.split(".") for n in group.linears), strict=False):
        if len(set(parts)) > 1:
            break
        common.append(parts[0])
    return ".".join(common)  # "" is the whole block


@torch.no_grad()
def capture_calls(bctx, names: list[str], k: int) -> dict[str, list[tuple[tuple, dict]]]:
    """The positional and keyword arguments each named module receives on the first k batches."""
    calls: dict[str, list] = {n: [] for n in names}
    hooks = [
        bctx.block.get_submodule(n).register_forward_pre_hook(
            lambda _m, args, kw, n=n: calls[n].append((args, kw)), with_kwargs=True
        )
        for n in names
        if n
    ]
    try:
        for x, kw in zip(bctx.inputs[:k], bctx.kwargs[:k], strict=True):
            bctx.block(x, **kw)
    finally:
        for h in hooks:
            h.remove()
    if "" in calls:  # the whole block: its own inputs
        calls[""] = [((x,), kw) for x, kw in zip(bctx.inputs[:k], bctx.kwargs[:k], strict=True)]
    return calls


def awq_block(
    bctx, *, bits: int, group_size: int, sym: bool, n_grid: int, clip: bool, search_samples: int
) -> dict[str, float]:
    """Scale search, folding, clipping and quantization of one block (BlockContext with act_mean_abs).

    Each group's α is scored on the output of its inspected module (`inspected_module`), run on the
    arguments it received in the full-precision block, over the first `search_samples` sequences."""
    quantize = rtn_quantizer(bits=bits, group_size=group_size, sym=sym)
    n_seq, k = 0, 0
    while k < len(bctx.inputs) and n_seq < search_samples:
        n_seq += bctx.inputs[k].shape[0]
        k += 1
    groups = [g for g in bctx.adapter.input_groups if fold_is_equivalent(bctx, g)]
    calls = capture_calls(bctx, sorted({inspected_module(g) for g in groups}), k)

    @torch.no_grad()
    def run(scope: str) -> list[torch.Tensor]:  # per batch: encoder batches differ in length
        module = bctx.block.get_submodule(scope) if scope else bctx.block
        outs = [module(*args, **kw) for args, kw in calls[scope]]
        return [(o[0] if isinstance(o, tuple) else o).float() for o in outs]

    alphas = {}
    searches = []
    for group in groups:
        scope = inspected_module(group)
        reference = run(scope)
        n_ref = sum(r.numel() for r in reference)
        originals = [bctx.weight(n) for n in group.linears]

        def scope_error(effective, names=group.linears, originals=originals, scope=scope, reference=reference,
                        n_ref=n_ref):  # fmt: skip
            for n, w in zip(names, effective, strict=True):
                bctx.set_weight(n, w)
            err = sum((o - r).pow(2).sum().item() for o, r in zip(run(scope), reference, strict=True)) / n_ref
            for n, w in zip(names, originals, strict=True):
                bctx.set_weight(n, w)
            return err

        act = bctx.stats[group.linears[0]].act_mean_abs
        result = awq_search_scale(originals, act, scope_error, quantize=quantize, n_grid=n_grid)
        searches.append((group, result.scales))
        alphas[group.linears[0]] = result.alpha
    for group, s in searches:  # all scales come from the unscaled block, then are applied together
        fold_scales(bctx, group, s)
    if clip:
        names = [n for n in bctx.linears if not n.rsplit(".", 1)[-1].startswith(("q_", "k_", "query", "key"))]
        inputs = bctx.linear_inputs(names)
        for name in names:
            W = bctx.weight(name)
            X = torch.cat([x.reshape(-1, W.shape[1]) for x in inputs[name]])
            max_val = awq_clip_search(W, X, quantize=quantize, group_size=group_size, n_grid=n_grid)
            bctx.set_weight(name, apply_clip(W, max_val, group_size))
        del inputs
    for name in bctx.linears:
        bctx.set_weight(name, quantize(bctx.weight(name)))
    return alphas


@register(
    "awq",
    bench=[{"bits": 3}, {"bits": 4}],
    family="quantization",
    papers=["awq"],
    fidelity="exact",
    summary="Activation-aware per-channel scaling searched on each group's module output, clipping, then RTN",
    options={
        "bits": Option(4, "bits per weight", choices=(2, 3, 4, 8)),
        "group_size": Option(128, "weights per quantization group along the input (-1 = whole row)"),
        "sym": Option(False, "symmetric grid (no zero point)"),
        "n_grid": Option(20, "grid points for alpha in [0, 1)"),
        "clip": Option(True, "run the weight clipping search"),
        "search_samples": Option(32, "calibration sequences used by the scale search"),
    },
)
def run_awq(ctx, *, bits, group_size, sym, n_grid, clip, search_samples) -> dict:
    alphas: list[float] = []

    def process(bctx):
        alphas.extend(
            awq_block(
                bctx,
                bits=bits,
                group_size=group_size,
                sym=sym,
                n_grid=n_grid,
                clip=clip,
                search_samples=search_samples,
            ).values()
        )
        for name in bctx.linears:
            out_f, in_f = bctx.weight(name).shape
            ctx.ledger.add_quantized(
                f"{bctx.name}.{name}", out_f, in_f, bits=bits, group_size=group_size, sym=sym
            )

    ctx.walk(process, stats=("act_mean_abs",))
    return {"alpha_mean": sum(alphas) / max(1, len(alphas)), "scaled_groups": len(alphas)}
