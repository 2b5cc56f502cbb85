"""SliceGPT: "SliceGPT: Compress Large Language Models by Deleting Rows and Columns" (Ashkboos,
Croci, do Nascimento, Hoefler, Hensman; arXiv 2401.15024).

Implemented, for Llama-family decoders (pre-RMSNorm):
1. computational invariance: each RMSNorm's scale is fused into the linear layers that read it, the
   norm becomes x/‖x‖·√D (RMSN, normalizing by the original width D as the official code does),
   which commutes with any orthogonal Q: RMSN(xQ) = RMSN(x)Q (Section 3.1); word embeddings are
   untied from the head so each can be rotated;
2. PCA rotations: at every point where the residual stream is read (layer inputs, the input of the
   MLP norm, layer outputs) Q = eigenvectors of Σxᵀx (+1% damping, as the official `pca_calc`) over
   calibration tokens, computed sequentially on the already-sliced model (Section 3.3); the residual
   connections carry the change of basis between consecutive Qs as extra d×d matrices
   (`attn_shortcut`, `mlp_shortcut`);
3. slicing: keep the first d = (1 - `sparsity`)·D principal directions (rounded down to a multiple of
   8), deleting rows of the matrices that write the stream and columns of those that read it, the
   embedding's columns and the head's columns (Section 3.2).
Not implemented: OPT/Phi adapters, the slicing schedules that vary d per layer, fine-tuning after
slicing. Deviation: the head is sliced too (the official default keeps it whole).
Fidelity: exact for the method above.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from reference_impls.common.folding import absorb_norm_scale
from reference_impls.pruning._structure import decoder_layers, model_inputs


class RMSN(nn.Module):
    """RMSNorm without a scale, normalizing by the model's original width `mean_dim`."""

    def __init__(self, mean_dim: int, eps: float) -> None:
        super().__init__()
        self.mean_dim, self.eps = mean_dim, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        variance = x.float().pow(2).sum(-1, keepdim=True) / self.mean_dim
        return (x.float() * torch.rsqrt(variance + self.eps)).to(x.dtype)


class SlicedDecoderLayer(nn.Module):
    """A Llama decoder layer whose residual connections apply a change of basis."""

    def __init__(self, layer: nn.Module, dim: int) -> None:
        super().__init__()
        self.self_attn, self.mlp = layer.self_attn, layer.mlp
        self.input_layernorm, self.post_attention_layernorm = (
            layer.input_layernorm,
            layer.post_attention_layernorm,
        )
        eye = torch.eye(dim, dtype=layer.mlp.down_proj.weight.dtype, device=layer.mlp.down_proj.weight.device)
        self.attn_shortcut = nn.Parameter(eye.clone(), requires_grad=False)  # (d_in, d_mid)
        self.mlp_shortcut = nn.Parameter(eye.clone(), requires_grad=False)  # (d_mid, d_out)

    def forward(self, hidden_states, attention_mask=None, position_ids=None, past_key_values=None,
                use_cache=False, position_embeddings=None, **kwargs):  # fmt: skip
        residual = hidden_states
        h, _ = self.self_attn(
            hidden_states=self.input_layernorm(hidden_states),
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            use_cache=use_cache,
            position_embeddings=position_embeddings,
            **kwargs,
        )
        h = residual @ self.attn_shortcut + h
        return h @ self.mlp_shortcut + self.mlp(self.post_attention_layernorm(h))


def fuse_norms(model: nn.Module) -> None:
    """Fold every RMSNorm scale into the next linears and untie the head (outputs unchanged)."""
    inner = model.model
    if model.lm_head.weight is inner.embed_tokens.weight:
        model.lm_head.weight = nn.Parameter(inner.embed_tokens.weight.detach().clone())
        model.config.tie_word_embeddings = False
    width = inner.embed_tokens.weight.shape[1]
    for layer in decoder_layers(model):
        for norm_name, readers in (("input_layernorm", ("q_proj", "k_proj", "v_proj")),
                                   ("post_attention_layernorm", ("gate_proj", "up_proj"))):  # fmt: skip
            norm = getattr(layer, norm_name)
            owner = layer.self_attn if norm_name == "input_layernorm" else layer.mlp
            absorb_norm_scale(norm, [getattr(owner, name) for name in readers])
            setattr(layer, norm_name, RMSN(width, norm.variance_epsilon))
    absorb_norm_scale(inner.norm, [model.lm_head])
    inner.norm = RMSN(width, inner.norm.variance_epsilon)


class _Stop(Exception):
    pass


@torch.no_grad()
def _pca(model: nn.Module, batches: list[torch.Tensor], module: nn.Module, use_output: bool) -> torch.Tensor:
    """Eigenvectors (columns, by decreasing eigenvalue) of Σxᵀx over the input or output of `module`."""
    H = [None]

    def hook(_m, args, out):
        x = (out[0] if isinstance(out, tuple) else out) if use_output else args[0]
        x = x.reshape(-1, x.shape[-1]).double()  # (tokens, width)
        H[0] = x.T @ x if H[0] is None else H[0] + x.T @ x
        raise _Stop  # nothing after this module is needed

    handle = module.register_forward_hook(hook)
    try:
        for batch in batches:
            try:
                model(**model_inputs(model, batch))
            except _Stop:
                pass
    finally:
        handle.remove()
    Hd = H[0]
    Hd.diagonal().add_(0.01 * Hd.diagonal().mean())
    eigval, eigvec = torch.linalg.eigh(Hd)
    return eigvec[:, torch.argsort(eigval, descending=True)]


def _read(linear: nn.Linear, Q: torch.Tensor, d: int) -> None:
    """A linear reading the stream: W ← (W Q)[:, :d]."""
    W = linear.weight.data
    linear.weight.data = (W.double() @ Q)[:, :d].to(W.dtype).contiguous()
    linear.in_features = d


def _write(linear: nn.Linear, Q: torch.Tensor, d: int) -> None:
    """A linear writing the stream: W ← (Qᵀ W)[:d], b ← (Qᵀ b)[:d]."""
    W = linear.weight.data
    linear.weight.data = (Q.T @ W.double())[:d].to(W.dtype).contiguous()
    if linear.bias is not None:
        linear.bias.data = (Q.T @ linear.bias.data.double())[:d].to(W.dtype)
    linear.out_features = d


def sliced_width(width: int, sparsity: float) -> int:
    d = int(width * (1 - sparsity))
    return max(8, d - d % 8) if width >= 16 else max(1, d)


@torch.no_grad()
def slicegpt_prune(model: nn.Module, batches: Iterable[torch.Tensor], *, sparsity: float = 0.25) -> int:
    """Rotate and slice a Llama-family model in place; returns the new residual width d."""
    batches = list(batches)
    layers = decoder_layers(model)
    inner = model.model
    width = inner.embed_tokens.weight.shape[1]
    d = sliced_width(width, sparsity)
    fuse_norms(model)
    for i, layer in enumerate(layers):
        layers[i] = SlicedDecoderLayer(layer, width)
    dtype = inner.embed_tokens.weight.dtype

    Q = _pca(model, batches, inner.embed_tokens, use_output=True)  # (D, D)
    E = inner.embed_tokens.weight.data
    inner.embed_tokens.weight.data = (E.double() @ Q)[:, :d].to(dtype).contiguous()
    inner.embed_tokens.embedding_dim = d
    for layer in layers:
        attn, mlp = layer.self_attn, layer.mlp
        for lin in (attn.q_proj, attn.k_proj, attn.v_proj):
            _read(lin, Q, d)
        layer.attn_shortcut.data = Q.T[:d].to(dtype)  # (d, D): back to the unrotated stream
        Q2 = _pca(model, batches, layer.post_attention_layernorm, use_output=False)
        layer.attn_shortcut.data = (layer.attn_shortcut.data.double() @ Q2[:, :d]).to(dtype)
        _write(attn.o_proj, Q2, d)
        for lin in (mlp.gate_proj, mlp.up_proj):
            _read(lin, Q2, d)
        layer.mlp_shortcut.data = Q2.T[:d].to(dtype)
        Q = _pca(model, batches, layer, use_output=True)
        layer.mlp_shortcut.data = (layer.mlp_shortcut.data.double() @ Q[:, :d]).to(dtype)
        _write(mlp.down_proj, Q, d)
    _read(model.lm_head, Q, d)
    return d


# ---------------------------------------------------------------- model-level entry
from reference_impls.common.pruning import dense_linear_sizes, record_structured  # noqa: E402
from reference_impls.common.registry import Option, register  # noqa: E402
from reference_impls.pruning._latency import LatencyProbe  # noqa: E402
from reference_impls.pruning._structure import count_params  # noqa: E402


@register(
    "slicegpt",
    family="pruning",
    papers=["slicegpt"],
    bench=[{"sparsity": 0.25}],
    bench_models=("causal",),
    fidelity="exact",
    summary=(
        "SliceGPT: PCA rotations of the residual stream (RMSNorm invariance), then delete rows and columns"
    ),
    options={"sparsity": Option(0.25, "fraction of the residual width removed")},
)
def run_slicegpt(ctx, *, sparsity: float) -> dict:
    if ctx.loaded.kind != "causal":
        raise ValueError(
            "slicegpt needs a pre-norm decoder (BERT is post-LayerNorm: no computational invariance)"
        )
    sizes = dense_linear_sizes(ctx)
    params_dense = count_params(ctx.model)
    probe = LatencyProbe(ctx.model)
    blocks_dense = count_params(decoder_layers(ctx.model))
    width = ctx.model.model.embed_tokens.weight.shape[1]
    d = slicegpt_prune(ctx.model, ctx.calibration, sparsity=sparsity)
    record_structured(ctx, sizes)
    for i, layer in enumerate(decoder_layers(ctx.model)):  # the residual changes of basis are stored too
        for name in ("attn_shortcut", "mlp_shortcut"):
            n = getattr(layer, name).numel()
            ctx.ledger.add(f"{ctx.adapter.blocks_path}.{i}.{name}", 0, n * 16, held=n)
    return {
        "hidden_size": width,
        "sliced_hidden_size": d,
        # whole model: untying a tied embedding adds a head matrix, so this can be negative
        "params_removed": 1 - count_params(ctx.model) / params_dense,
        "block_params_removed": 1 - count_params(decoder_layers(ctx.model)) / blocks_dense,
        **probe.metrics(ctx.model),
    }
