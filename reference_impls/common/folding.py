"""Equivalent transforms that move a per-channel scale between a module and the linears reading it.

If a norm (or a linear) produces X and linears compute X Wᵀ, then dividing the producer's output
channels by s and multiplying the readers' weight columns by s leaves every output unchanged:
(X diag(s)⁻¹)(W diag(s))ᵀ = X Wᵀ. SmoothQuant and AWQ fold their scales this way; SliceGPT (and
rotation methods) first absorb each RMSNorm's own scale into its readers so that the norm commutes
with an orthogonal change of basis. The transform is exact only when nothing else reads the
producer's output: in a post-LN block (BERT) the norm also feeds the residual, which
`fold_is_equivalent` detects by trying it.
"""

from __future__ import annotations

import torch
from torch import nn

from reference_impls.common.adapters import get_weight, is_linear, set_weight


def is_norm(module: nn.Module) -> bool:
    """A LayerNorm or RMSNorm-like module: an elementwise weight of the feature size, no matmul."""
    w = getattr(module, "weight", None)
    return w is not None and w.dim() == 1 and not is_linear(module)


@torch.no_grad()
def fold_into(prev: nn.Module, readers: list[nn.Module], s: torch.Tensor) -> None:
    """prev's output channels / s (a norm's weight and bias, or a linear's rows and bias), each
    reader's weight columns · s. `s` has the readers' input size."""
    if is_linear(prev):
        set_weight(prev, get_weight(prev).float() / s[:, None])
    else:
        prev.weight.div_(s.to(prev.weight.dtype))
    if getattr(prev, "bias", None) is not None:
        prev.bias.div_(s.to(prev.bias.dtype))
    for lin in readers:
        set_weight(lin, get_weight(lin).float() * s[None, :])


@torch.no_grad()
def absorb_norm_scale(norm: nn.Module, readers: list[nn.Module]) -> None:
    """Multiply the readers' weight columns by the norm's elementwise weight and set that weight to 1.

    A LayerNorm bias b becomes part of each reader's bias (W b), so the outputs are unchanged."""
    gamma = norm.weight.detach().float()
    bias = getattr(norm, "bias", None)
    for lin in readers:
        w = get_weight(lin).float()  # (out, in)
        if bias is not None:
            if lin.bias is None:
                lin.bias = nn.Parameter(torch.zeros(w.shape[0], dtype=lin.weight.dtype, device=w.device))
            lin.bias.add_((w @ bias.float()).to(lin.bias.dtype))
        set_weight(lin, w * gamma[None, :])
    norm.weight.fill_(1.0)
    if bias is not None:
        bias.zero_()


def fold_shape_ok(bctx, group) -> bool:
    """Can the producer of this input group (adapters.InputGroup) absorb diag(s)⁻¹ by its shape?"""
    if group.prev is None:
        return False
    if group.prev in bctx.linears:  # a linear: its output rows must be exactly this input's channels
        return bctx.weight(group.prev).shape[0] == bctx.weight(group.linears[0]).shape[1]
    return is_norm(bctx.block.get_submodule(group.prev))


def fold_scales(bctx, group, s: torch.Tensor) -> None:
    """Fold `s` (in,) between an input group's producer and its linears inside a BlockContext."""
    prev = bctx.linears[group.prev] if group.prev in bctx.linears else bctx.block.get_submodule(group.prev)
    fold_into(prev, [bctx.linears[n] for n in group.linears], s)


@torch.no_grad()
def fold_is_equivalent(bctx, group) -> bool:
    """Fold random scales, compare the block's output on one calibration batch, undo.

    The shape test is not enough: in a post-LN block (BERT) the norm before the MLP also feeds the
    residual branch, so scaling it changes the function; this check catches any such case.
    """
    if not fold_shape_ok(bctx, group):
        return False
    x, kw = bctx.inputs[0], bctx.kwargs[0]

    def out():
        o = bctx.block(x, **kw)
        return (o[0] if isinstance(o, tuple) else o).float()

    names = [group.prev, *group.linears]
    saved = {
        n: p.detach().clone()
        for n, p in bctx.block.named_parameters()
        if any(n == f"{m}.weight" or n == f"{m}.bias" for m in names)
    }
    ref = out()
    n_in = bctx.weight(group.linears[0]).shape[1]
    fold_scales(bctx, group, torch.rand(n_in, generator=torch.Generator().manual_seed(0)) * 1.5 + 0.5)
    ok = torch.allclose(out(), ref, rtol=1e-3, atol=1e-4 * ref.abs().max().item())
    params = dict(bctx.block.named_parameters())
    for n, v in saved.items():
        params[n].copy_(v)
    return ok


@torch.no_grad()
def inject_activation_outliers(
    model: nn.Module, adapter, probe: dict, *, factor: float, n_channels: int = 4, seed: int = 0
) -> list[int]:
    """Give the model systematic activation outliers without changing its function.

    Small models lack the 10-100x outlier features that appear in LLMs beyond ~6.7B parameters
    (LLM.int8(), SmoothQuant). Multiplying a few channels of every norm that feeds linears by
    `factor` and dividing the matching weight columns of those linears by it (`fold_into` with
    s = 1/factor there) reproduces that regime for 8-bit activation quantizers. Each kind of norm is
    kept only if the model's output on `probe` is unchanged (post-LN norms that also feed the
    residual are left alone). Returns the chosen channels, or [] when no norm kept them.
    """
    device = next(model.parameters()).device
    probe = {k: v.to(device) for k, v in probe.items()}
    ref = model(**probe)[0].float()
    blocks = adapter.blocks(model)
    chosen: list[int] = []
    kept = 0
    for group in adapter.input_groups:
        if group.prev is None or not is_norm(blocks[0].get_submodule(group.prev)):
            continue
        hidden = blocks[0].get_submodule(group.prev).weight.numel()
        if not chosen:
            gen = torch.Generator().manual_seed(seed)
            chosen = torch.randperm(hidden, generator=gen)[:n_channels].tolist()
        s = torch.ones(hidden, device=device)
        s[chosen] = 1 / factor
        saved = [(n, p.detach().clone()) for n, p in model.named_parameters()]
        for block in blocks:
            norm = block.get_submodule(group.prev)
            if norm.weight.numel() == hidden:
                fold_into(norm, [block.get_submodule(n) for n in group.linears], s)
        out = model(**probe)[0].float()
        if torch.allclose(out, ref, rtol=1e-3, atol=1e-4 * ref.abs().max().item()):
            kept += 1
        else:  # not an equivalent transform here: undo
            params = dict(model.named_parameters())
            for n, v in saved:
                params[n].copy_(v)
    return chosen if kept else []
