"""AQLM: "Extreme Compression of Large Language Models via Additive Quantization" (Egiazarian, Panferov,
Kuznedelev, Frantar, Babenko, Alistarh; arXiv 2401.06118, ICML 2024); catalog record `aqlm`.

Additive (multi-codebook) quantization of each linear layer, fitted to the layer's calibration inputs.
The weight W (out, in) is cut into groups of g consecutive input columns; a group of row i is coded as
the sum of one vector from each of M codebooks C_1..C_M of 2^B vectors in R^g, times a per-output-channel
scale s_i:  Ŵ_i,group j = s_i · Σ_m C_m[b_ijm].  Codes b and codebooks C minimise the calibration-weighted
error ||WX − ŴX||² = tr((W − Ŵ) H (W − Ŵ)ᵀ) with H ∝ XXᵀ (the scale of H does not matter), alternating
as the paper does: codebooks and scales by Adam on that objective with the codes fixed, then the
codes by beam search with the codebooks fixed (the paper's MRF over codes, searched group by group and
codebook by codebook: for every row and every hypothesis in the beam, the exact change of the row's
error for each of the 2^B candidate codes is computed from G = (W − Ŵ)H; the best `beam_size` codes per
row survive). Initialisation: residual k-means of the scale-normalised groups, one codebook after another.

Implemented (fidelity: simplified), with the conventions of the official code (Vahe1994/AQLM, `src/aq.py`,
`src/beam_search_xtx.py`, `src/kmeans.py`, `aq_engine.py`, `src/finetune.py`): scales = the L2 norm of
each output row (`scale_nbits=0`), trained with the codebooks and stored in 16 bits; codebooks per
layer, 16-bit values; k-means started from random groups, empty clusters keep their centroid;
Adam(lr 1e-4, betas (0, 0.95), amsgrad) on the objective divided by out_features, one optimizer per
layer kept across rounds; a round is `max_steps` Adam steps then one beam search whose group and
codebook order is shuffled (seeded); stop when a round improves the objective by less than `tolerance`
(the README's `relative_mse_tolerance=0.01`); the beam starts from the current codes, so a search never
makes the objective worse. Codebooks and scales are rounded to float16 before each beam search, so the
final codes are chosen for the stored values and the weight the model uses is exactly their
reconstruction. Optional short block fine-tuning (`finetune_steps` > 0, the paper's second stage):
after a block's linears are quantized, their codebooks and scales and the block's norm parameters are
trained with the codes fixed to match the block's outputs before quantization on the same inputs.
Sized for a CPU (say so when comparing): beam size 1 (the official command line's default; larger beams
are supported), at most `rounds` = 4 rounds of 50 Adam steps (official: 100 steps per round until the
tolerance stops it), 25 k-means iterations (official 100), fine-tuning for a few steps of the project's
AdamW loop (betas 0.9/0.999; official: Adam betas 0.9/0.95 with lr 1e-5 over epochs with validation
early stopping).
Not implemented: PV-tuning, output groups > 1, quantized scales or codebook values (`scale_nbits`,
`codebook_value_nbits`), the lookup kernels (weights are stored de-quantized).
Storage: M·B code bits per group of g weights, M·2^B·g 16-bit codebook values per matrix and one
16-bit scale per output row (`QuantizedWeight.estimate_nbits_per_parameter` of the official code); on
small matrices the codebooks cost much more than on a 7B model (2x8 over groups of 8: +0.61 bit/weight
on the project's model, +0.004 on a 4096x4096 matrix, where the paper's 1x16 codebook adds 0.5).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import nn

from reference_impls.common.adapters import get_weight
from reference_impls.common.fake_quant import swap_linears
from reference_impls.common.registry import Option, register
from reference_impls.common.training import TrainConfig, train

CODEBOOK_BITS = 16  # codebook values and scales are stored in float16


# ---------------------------------------------------------------- pure core
def dequantize(codes: torch.Tensor, codebooks: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Ŵ = s ⊙ concat_j Σ_m C_m[b_jm]: codes (out, J, M), codebooks (M, K, g), scales (out, 1) → (out, J·g).
    Differentiable in the codebooks and scales."""
    M = codebooks.shape[0]
    vectors = codebooks[torch.arange(M, device=codes.device), codes]  # (out, J, M, g)
    return scales * vectors.sum(2).flatten(1)


def objective(weight: torch.Tensor, approx: torch.Tensor, hessian: torch.Tensor) -> torch.Tensor:
    """tr((W − Ŵ) H (W − Ŵ)ᵀ), the calibration-weighted error ||WX − ŴX||² for H = XXᵀ."""
    E = weight - approx  # (out, in)
    return ((E @ hessian) * E).sum()


def kmeans(points: torch.Tensor, k: int, *, iters: int, generator: torch.Generator
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means from k random points (official `fit_kmeans`): (centroids (k, g), codes (N,))."""
    N = points.shape[0]
    if N >= k:
        start = torch.randperm(N, generator=generator)[:k]
    else:  # fewer groups than centroids: some start equal (they stay so, or split)
        start = torch.randint(N, (k,), generator=generator)
    C = points[start.to(points.device)].clone()  # (k, g)

    def nearest(C: torch.Tensor, chunk: int = 4096) -> torch.Tensor:  # argmax x·c − ½‖c‖² = argmin ‖x − c‖²
        half_norm = (C * C).sum(1)  # chunks keep the (chunk, k) scores in cache
        return torch.cat([torch.addmm(half_norm, points[i:i + chunk], C.T, beta=-0.5).argmax(1)
                          for i in range(0, N, chunk)])  # (N,)

    codes = nearest(C)
    for _ in range(iters):
        sums = torch.zeros_like(C).index_add_(0, codes, points)
        counts = torch.bincount(codes, minlength=k).unsqueeze(1)  # (k, 1)
        C = torch.where(counts > 0, sums / counts.clamp_min(1), C)  # an empty cluster keeps its centroid
        new = nearest(C)
        if torch.equal(new, codes):
            break
        codes = new
    return C, codes


def residual_kmeans_init(normalized: torch.Tensor, *, num_codebooks: int, codebook_size: int, group_size: int,
                         iters: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Codebook m = k-means of what codebooks 1..m−1 leave of the groups (official `init_aq_kmeans`).
    normalized (out, in) → codes (out, J, M), codebooks (M, K, g)."""
    n_out, n_in = normalized.shape
    residual = normalized.reshape(-1, group_size).clone()  # (out·J, g), row-major: row i's groups in order
    codes, codebooks = [], []
    for _ in range(num_codebooks):
        C, b = kmeans(residual, codebook_size, iters=iters, generator=generator)
        residual -= C[b]
        codes.append(b.view(n_out, n_in // group_size))
        codebooks.append(C)
    return torch.stack(codes, -1), torch.stack(codebooks)


def beam_search(weight: torch.Tensor, hessian: torch.Tensor, codes: torch.Tensor, codebooks: torch.Tensor,
                scales: torch.Tensor, *, beam_size: int = 1, generator: torch.Generator | None = None
                ) -> torch.Tensor:
    """New codes (out, J, M) by beam search on tr((W − Ŵ) H (W − Ŵ)ᵀ), rows independent, starting from
    `codes`: for each group j and codebook m (order shuffled by `generator`, natural order without one),
    every hypothesis of each row tries all 2^B codes; the row keeps its best `beam_size` hypotheses.

    Changing code b_ijm moves row i of Ŵ by Δ = s_i (c_new − c_old) on group j, so with R = W − Ŵ and
    G = R H the row's error becomes  e − 2 Δ·G_ij + Δ H_jj Δᵀ  (computed for all candidates at once)."""
    n_out, J, M = codes.shape
    g = codebooks.shape[-1]
    s = scales.reshape(n_out, 1)  # (out, 1)
    R = (weight - dequantize(codes, codebooks, scales)).unsqueeze(0)  # (beam, out, in) residual
    G = R @ hessian  # (beam, out, in)
    err = (R * G).sum(-1)  # (beam, out)
    beam = codes.unsqueeze(0).clone()  # (beam, out, J, M)
    rows = torch.arange(n_out, device=codes.device)
    def order(n: int) -> list[int]:  # the official code shuffles groups, and codebooks within each group
        return (torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)).tolist()

    for j in order(J):
        sl = slice(j * g, (j + 1) * g)
        H_jj = hessian[sl, sl]  # (g, g)
        for m in order(M):
            C = codebooks[m]  # (K, g)
            K = C.shape[0]
            old = C[beam[:, :, j, m]]  # (beam, out, g)
            G_j, oldH = G[:, :, sl], old @ H_jj  # (beam, out, g)
            cHc = ((C @ H_jj) * C).sum(-1)  # (K,)
            lin = G_j @ C.T - (old * G_j).sum(-1, keepdim=True)  # (beam, out, K): (c − c_old)·G_ij
            quad = cHc - 2 * oldH @ C.T + (old * oldH).sum(-1, keepdim=True)  # (c − c_old) H_jj (c − c_old)ᵀ
            cand = err.unsqueeze(-1) - 2 * s * lin + s.square() * quad  # (beam, out, K)
            n_keep = min(beam_size, cand.shape[0] * K)
            flat = cand.permute(1, 0, 2).reshape(n_out, -1)  # (out, beam·K)
            best, idx = flat.topk(n_keep, dim=1, largest=False)  # (out, n), ascending
            src, new_code = (idx // K).T, (idx % K).T  # (n, out): source hypothesis and its new code
            if beam.shape[0] > 1 or n_keep > 1:  # reorder the hypotheses (a single one stays in place)
                beam, R, G, old = beam[src, rows], R[src, rows], G[src, rows], old[src, rows]
            beam[:, :, j, m] = new_code
            delta = s * (C[new_code] - old)  # (n, out, g), Ŵ += Δ
            R[:, :, sl] -= delta
            G = G - delta @ hessian[sl, :]  # (n, out, in)
            err = best.T  # (n, out), sorted: hypothesis 0 is each row's best
    return beam[0]


@dataclass
class AQLMResult:
    weight: torch.Tensor  # de-quantized (out, in), in the input's dtype: what the model computes with
    codes: torch.Tensor  # (out, J, M) int64, each < 2^B
    codebooks: torch.Tensor  # (M, 2^B, g) float16, as stored
    scales: torch.Tensor  # (out, 1) float16, as stored
    history: list[float] = field(default_factory=list)  # objective after init, then after each round


def aqlm_quantize(weight: torch.Tensor, hessian: torch.Tensor, *, num_codebooks: int = 2,
                  nbits_per_codebook: int = 8, group_size: int = 8, beam_size: int = 1, rounds: int = 4,
                  max_steps: int = 50, lr: float = 1e-4, kmeans_iters: int = 25, tolerance: float = 0.01,
                  seed: int = 0) -> AQLMResult:
    """AQLM of one linear (module docstring): k-means init, then up to `rounds` of (Adam on codebooks and
    scales for `max_steps` steps, float16 rounding, beam search on codes)."""
    n_out, n_in = weight.shape
    if group_size < 1 or n_in % group_size:
        raise ValueError(f"--group-size {group_size} must divide the {n_in} input features")
    dtype = torch.promote_types(weight.dtype, torch.float32)
    W, H = weight.to(dtype), hessian.to(dtype)
    gen = torch.Generator().manual_seed(seed)
    scales = W.norm(dim=1, keepdim=True) + 1e-9  # (out, 1), official scale_nbits=0
    codes, codebooks = residual_kmeans_init(W / scales, num_codebooks=num_codebooks,
                                            codebook_size=2**nbits_per_codebook, group_size=group_size,
                                            iters=kmeans_iters, generator=gen)
    C, s = codebooks.requires_grad_(True), scales.requires_grad_(True)
    opt = torch.optim.Adam([C, s], lr=lr, betas=(0.0, 0.95), amsgrad=True)
    history = [float(objective(W, dequantize(codes, C.detach(), s.detach()), H))]
    best = history[0]
    for r in range(rounds):
        if r > 0 and history[-1] > (1 - tolerance) * best:
            break  # the official early stop (relative_mse_tolerance), checked before a round's Adam steps
        best = min(best, history[-1])
        with torch.enable_grad():  # the layer walk runs under no_grad
            for _ in range(max_steps):
                loss = objective(W, dequantize(codes, C, s), H) / n_out
                opt.zero_grad()
                loss.backward()
                opt.step()
        with torch.no_grad():
            C.copy_(C.half()), s.copy_(s.half())  # the stored precision, before the codes are chosen
            codes = beam_search(W, H, codes, C, s, beam_size=beam_size, generator=gen)
            history.append(float(objective(W, dequantize(codes, C, s), H)))
    C16, s16 = C.detach().half(), s.detach().half()
    Q = dequantize(codes, C16.to(dtype), s16.to(dtype))
    return AQLMResult(weight=Q.to(weight.dtype), codes=codes, codebooks=C16, scales=s16, history=history)


def aqlm_bits(n_out: int, n_in: int, *, num_codebooks: int, nbits_per_codebook: int, group_size: int) -> int:
    """Stored bits of one matrix: M·B code bits per group, M·2^B·g float16 codebook values, a float16
    scale per output row."""
    codes = n_out * (n_in // group_size) * num_codebooks * nbits_per_codebook
    codebooks = num_codebooks * 2**nbits_per_codebook * group_size * CODEBOOK_BITS
    return codes + codebooks + n_out * CODEBOOK_BITS


def resolve_codebooks(*, bits: int, num_codebooks: int, nbits_per_codebook: int, group_size: int) -> int:
    """M from the options: `--num-codebooks`, or bits·g/B when it is 0; one-line errors for bad combos."""
    if not 1 <= nbits_per_codebook <= 16:
        raise ValueError(f"--nbits-per-codebook must be 1-16, got {nbits_per_codebook}")
    if group_size < 1:
        raise ValueError(f"--group-size must be a positive number of input columns, got {group_size}")
    if bits < 0 or num_codebooks < 0 or (bits == 0 and num_codebooks == 0):
        raise ValueError(f"give --bits (> 0) or --num-codebooks (> 0), got {bits} and {num_codebooks}")
    if num_codebooks == 0:
        if bits * group_size % nbits_per_codebook:
            raise ValueError(f"--bits {bits}: bits x group size ({bits * group_size}) must be a multiple of "
                             f"--nbits-per-codebook {nbits_per_codebook} (M = bits·g/B codebooks)")
        return bits * group_size // nbits_per_codebook
    if bits and bits * group_size != num_codebooks * nbits_per_codebook:
        raise ValueError(f"--bits {bits} disagrees with --num-codebooks {num_codebooks} x "
                         f"--nbits-per-codebook {nbits_per_codebook} / --group-size {group_size}; "
                         "give --bits 0 or matching values")
    return num_codebooks


def check_aqlm_options(*, bits, num_codebooks, nbits_per_codebook, group_size, beam_size, rounds, max_steps,
                       kmeans_iters, tolerance, finetune_steps=0, finetune_lr=1e-4, **_) -> int:
    """M for the options, or a one-line ValueError; needs no model (`atlas run` calls it before loading)."""
    M = resolve_codebooks(bits=bits or (0 if num_codebooks else 2), num_codebooks=num_codebooks,
                          nbits_per_codebook=nbits_per_codebook, group_size=group_size)
    if beam_size < 1 or rounds < 0 or max_steps < 0 or kmeans_iters < 0 or not 0 <= tolerance < 1:
        raise ValueError("--beam-size must be >= 1, --rounds, --max-steps and --kmeans-iters >= 0, "
                         "--tolerance in [0, 1)")
    if finetune_steps < 0 or finetune_lr <= 0:
        raise ValueError("--finetune-steps must be >= 0 and --finetune-lr > 0")
    return M


# ---------------------------------------------------------------- block fine-tuning (the second stage)
class AQLinear(nn.Module):
    """A linear computing with dequantize(codes, codebooks, scales): codes fixed, the rest trainable."""

    def __init__(self, res: AQLMResult, bias: torch.Tensor | None):
        super().__init__()
        self.register_buffer("codes", res.codes)
        self.codebooks = nn.Parameter(res.codebooks.float())
        self.scales = nn.Parameter(res.scales.float())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = dequantize(self.codes, self.codebooks, self.scales)  # (out, in)
        return nn.functional.linear(x, weight.to(x.dtype), self.bias)


def finetune_block(bctx, results: dict[str, AQLMResult], targets: list[torch.Tensor],
                   cfg: TrainConfig) -> dict:
    """Codebooks, scales and the block's norm parameters by Adam on ‖block_fp(X) − block_q(X)‖² with the
    codes fixed (the official `finetune_groupwise`); writes the float16-rounded result back."""
    originals = dict(bctx.linears)
    aq = swap_linears(bctx.block, bctx.linears,
                      lambda n, _w, old: AQLinear(results[n], getattr(old, "bias", None)))
    norms = [p for m in bctx.block.modules() if "norm" in type(m).__name__.lower()
             for p in m.parameters(recurse=False)]  # RMSNorm / LayerNorm weights (and biases)
    flags = [p.requires_grad for p in norms]

    def loss_fn(i: int) -> torch.Tensor:
        return bctx.output_mse(i, targets)

    before = bctx.mean_output_mse(targets)
    try:
        for p in norms:
            p.requires_grad_(True)
        with torch.enable_grad():
            train([q for m in aq.values() for q in (m.codebooks, m.scales)] + norms, loss_fn,
                  lambda step: step % len(targets), cfg)
        with torch.no_grad():
            for name, m in aq.items():  # stored precision, back into the original modules
                C16, s16 = m.codebooks.half(), m.scales.half()
                results[name] = replace(results[name], codebooks=C16, scales=s16,
                                        weight=dequantize(m.codes, C16.float(), s16.float()))
    finally:
        for p, flag in zip(norms, flags, strict=True):
            p.requires_grad_(flag)
        for name, module in originals.items():
            bctx.block.set_submodule(name, module)
            bctx.linears[name] = module
    for name, res in results.items():
        bctx.set_weight(name, res.weight)
    return {"loss_init": before, "loss_trained": bctx.mean_output_mse(targets)}


# ---------------------------------------------------------------- model-level entry
@register(
    "aqlm", family="quantization", papers=["aqlm"], fidelity="simplified",
    summary="Additive multi-codebook quantization: k-means init, then Adam on codebooks and beam search "
            "on codes, minimising ‖WX − ŴX‖²",
    options={
        "bits": Option(0, "code bits per weight M·B/g (0: from --num-codebooks; both 0: 2)"),
        "num_codebooks": Option(0, "M, codebooks summed per group (0: bits·group_size/nbits_per_codebook)"),
        "nbits_per_codebook": Option(8, "B: each codebook holds 2^B vectors (1-16)"),
        "group_size": Option(8, "g: consecutive input columns coded together"),
        "beam_size": Option(1, "hypotheses kept per row in the beam search (official default 1)"),
        "rounds": Option(4, "at most this many rounds of (Adam steps, beam search); official: until "
                            "--tolerance stops it"),
        "max_steps": Option(50, "Adam steps on codebooks and scales per round (official 100)"),
        "lr": Option(1e-4, "Adam learning rate (official default)"),
        "kmeans_iters": Option(25, "Lloyd iterations of the residual k-means initialisation (official 100)"),
        "tolerance": Option(0.01, "stop when a round improves the objective by less than this fraction"),
        "finetune_steps": Option(0, "block fine-tuning steps (codebooks, scales, norms; 0 = off)"),
        "finetune_lr": Option(1e-4, "block fine-tuning learning rate (official 1e-5 over whole epochs)"),
    },
    bench=[{"bits": 2}, {"bits": 2, "nbits_per_codebook": 4, "group_size": 4},
           {"bits": 2, "nbits_per_codebook": 4, "group_size": 4, "finetune_steps": 32},
           {"bits": 2, "nbits_per_codebook": 8, "group_size": 4},
           {"bits": 3, "nbits_per_codebook": 6, "group_size": 4}],
    bench_models=("causal",),
    check=check_aqlm_options,
)
def run_aqlm(ctx, *, bits, num_codebooks, nbits_per_codebook, group_size, beam_size, rounds, max_steps, lr,
             kmeans_iters, tolerance, finetune_steps=0, finetune_lr=1e-4) -> dict:
    M = check_aqlm_options(bits=bits, num_codebooks=num_codebooks, nbits_per_codebook=nbits_per_codebook,
                           group_size=group_size, beam_size=beam_size, rounds=rounds, max_steps=max_steps,
                           kmeans_iters=kmeans_iters, tolerance=tolerance, finetune_steps=finetune_steps,
                           finetune_lr=finetune_lr)
    for n in {get_weight(m).shape[1] for m in ctx.adapter.linears(ctx.adapter.blocks(ctx.model)[0]).values()}:
        if n % group_size:
            raise ValueError(f"--group-size {group_size} must divide every linear's input features (got {n})")
    cfg = TrainConfig(max_steps=finetune_steps, lr=finetune_lr, weight_decay=0.0, warmup_steps=0,
                      min_lr_ratio=1.0, grad_clip=None, seed=ctx.seed, bf16=False, progress=False)
    reduction, relative, tuned = [], [], []

    def process(block) -> None:
        targets = [t.detach() for t in block.run()] if finetune_steps else []  # the block before quantizing
        results = {}
        for i, name in enumerate(block.linears):
            w, H = block.weight(name), block.stats[name].hessian
            res = aqlm_quantize(w, H, num_codebooks=M, nbits_per_codebook=nbits_per_codebook,
                                group_size=group_size, beam_size=beam_size, rounds=rounds,
                                max_steps=max_steps, lr=lr, kmeans_iters=kmeans_iters, tolerance=tolerance,
                                seed=ctx.seed * 1000 + block.index * 16 + i)
            block.set_weight(name, res.weight)
            results[name] = res
            ctx.ledger.add(f"{block.name}.{name}", w.numel(),
                           aqlm_bits(*w.shape, num_codebooks=M, nbits_per_codebook=nbits_per_codebook,
                                     group_size=group_size))
            reduction.append(res.history[-1] / max(res.history[0], 1e-30))
            relative.append(res.history[-1] / max(float(objective(w, torch.zeros_like(w), H)), 1e-30))
        if finetune_steps:
            tuned.append(finetune_block(block, results, targets, cfg))

    ctx.walk(process, stats=("hessian",))
    out = {"num_codebooks": M, "code_bits": M * nbits_per_codebook / group_size,
           "error_vs_init": sum(reduction) / max(len(reduction), 1),
           "relative_output_error": sum(relative) / max(len(relative), 1)}
    if tuned:
        out.update(block_loss_init=[float(f"{t['loss_init']:.6g}") for t in tuned],
                   block_loss_trained=[float(f"{t['loss_trained']:.6g}") for t in tuned])
    return out
