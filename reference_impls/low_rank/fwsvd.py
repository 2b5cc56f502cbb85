"""FWSVD: "Language model compression with weighted low-rank factorization" (Hsu, Hua, Chang, Lou,
Shen, Jin; arXiv 2207.00112, ICLR 2022); catalog record `fwsvd`.

Plain SVD treats every weight alike; FWSVD weighs each weight's reconstruction error by its Fisher
information I_w = E[(∂L/∂w)²], the first-order estimate of how much the task loss changes when w
moves. A per-entry weighting has no closed-form low-rank solution, so the paper shares one importance
per row, Î_i = Σ_j I_{W_ij}, and solves min ‖Î^{1/2}(W − A B)‖_F exactly by the SVD of Î^{1/2} W:
A = Î^{-1/2} U_k Σ_k, B = V_kᵀ.

Implemented (fidelity: exact, with one reading stated): the empirical Fisher summed over calibration
windows one window at a time (per-sample squared gradients of the causal-LM loss of the uncompressed
model), row importance summed along the input dimension of the (out, in) `nn.Linear` weight (the
rows are output neurons, the layout of the PyTorch BERT the paper compresses), the weighted SVD
above; rank = int(m·n·r / (m + n)) (DESIGN §6 `--ratio`). A row whose Fisher is 0 would make Î⁻¹
infinite: 1e-6 × the mean row importance is added to every row (its weights never mattered on the
data, so any finite weighting of it is as good).
Not implemented: the fine-tuning after factorization (the paper's "FWSVD + fine-tuning"); the paper
takes the Fisher from the downstream task's loss, here the language-modelling loss, so the method
runs on the causal LM only (the sentence encoder has no loss to differentiate).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.pytorch_utils import Conv1D

from reference_impls.common.adapters import get_weight
from reference_impls.common.layerwise import block_linears
from reference_impls.common.registry import Option, register
from reference_impls.common.storage import rank_for_ratio


# ---------------------------------------------------------------- pure core
def row_importance(fisher: torch.Tensor) -> torch.Tensor:
    """Î_i = Σ_j I_{W_ij} (out,), from a per-entry Fisher (out, in) or given per row (out,)."""
    I_row = fisher.double().sum(1) if fisher.dim() == 2 else fisher.double()
    return I_row + 1e-6 * I_row.mean().clamp(min=1e-30)


def fwsvd_compress(weight: torch.Tensor, fisher: torch.Tensor, *, rank: int) -> torch.Tensor:
    """W′ = Î^{-1/2} U_k Σ_k V_kᵀ with U Σ Vᵀ = SVD(Î^{1/2} W): the best rank-k fit of W when row i's
    squared error is weighted by Î_i (Eckart-Young on the row-scaled matrix)."""
    d = row_importance(fisher).sqrt()[:, None]  # Î^{1/2}, (out, 1)
    U, S, Vh = torch.linalg.svd(weight.double() * d, full_matrices=False)  # (out, r) (r,) (r, in)
    return ((U[:, :rank] * S[:rank]) @ Vh[:rank] / d).to(weight.dtype)


# ---------------------------------------------------------------- model-level entry
def empirical_fisher(ctx) -> dict[str, torch.Tensor]:
    """Σ over calibration windows of (∂L/∂W)² for every block linear, one window per backward."""
    modules = dict(block_linears(ctx.model, ctx.adapter))
    fisher = {n: torch.zeros_like(get_weight(m), dtype=torch.float32) for n, m in modules.items()}
    params = list(ctx.model.parameters())
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    for m in modules.values():
        m.weight.requires_grad_(True)
    try:
        for batch in ctx.calibration:
            for ids in batch["input_ids"]:
                x = ids[None].to(ctx.device)  # (1, seq): per-sample gradients, as the Fisher is defined
                logits = ctx.model(input_ids=x, use_cache=False).logits[:, :-1].float()
                loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
                for m in modules.values():
                    m.weight.grad = None
                loss.backward()
                for n, m in modules.items():
                    g = m.weight.grad.float()
                    fisher[n] += (g.t() if isinstance(m, Conv1D) else g).pow(2)  # GPT-2's Conv1D is (in, out)
    finally:
        for p, f in zip(params, flags, strict=True):
            p.grad = None
            p.requires_grad_(f)
    return fisher


@register(
    "fwsvd", family="low_rank", papers=["fwsvd"], fidelity="exact",
    summary="Fisher-weighted SVD: rows weighted by their summed empirical Fisher information",
    options={"ratio": Option(0.8, "fraction of each linear's parameters the factors keep (0-1]")},
    bench=[{"ratio": r} for r in (0.8, 0.6, 0.4)],
    bench_models=("causal",),
)
def run_fwsvd(ctx, *, ratio: float) -> dict:
    rank_for_ratio(1, 1, ratio)  # validates --ratio before calibration
    if ctx.loaded.kind != "causal":
        raise ValueError("fwsvd needs a language-modelling loss for its Fisher information: --model causal")
    fisher = empirical_fisher(ctx)
    kept = 0

    def compress(name: str, w: torch.Tensor) -> torch.Tensor:
        nonlocal kept
        m, n = w.shape
        k = rank_for_ratio(m, n, ratio)
        ctx.ledger.add_low_rank(name, m, n, rank=k)
        kept += k * (m + n)
        return fwsvd_compress(w, fisher[name], rank=k)

    ctx.map_linears(compress)
    return {"factor_params": kept, "ratio_kept": kept / ctx.ledger.n_weights}
