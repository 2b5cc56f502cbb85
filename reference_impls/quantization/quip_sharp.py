"""QuIP#: "QuIP#: Even Better LLM Quantization with Hadamard Incoherence and Lattice Codebooks" (Tseng,
Chee, Sun, Kuleshov, De Sa; arXiv 2402.04396, ICML 2024); catalog record `quip-sharp`.

Four pieces, as in the paper and the official code (Cornell-RelaxML/quip-sharp, `lib/algo/quip.py`,
`lib/codebook/latticee8_padded12*.py`):

1. Randomized Hadamard transform (RHT) incoherence processing: W̃ = Q_outᵀ W Q_in, H̃ = Q_inᵀ H Q_in with
   Q = diag(s) H_n / √n, s random signs (the official `RHT_W`, `RHT_H`). Sizes that are not powers of two
   use H_m ⊗ H_{2^k} with a small Hadamard H_m (768 = 12 · 64): the official code's `get_hadK` with its
   hard-coded H_12, H_20, ..., here Paley's construction (`common/hadamard.py`); no padding.
2. The E8P ("E8 padded") codebook, 2 bits per weight: 2^16 points of E8 + 1/4 in 8 dimensions. Source set
   A: the 227 absolute values of D̂8 = D8 + 1/2 points with ‖x‖² ≤ 10, plus 29 of norm² 12 (entries 3/2 and
   1/2; the paper does not list which, these are the official ones) = 256. Codebook = {σ(a) ± 1/4 : a ∈ A,
   σ a sign pattern with Σσ(a) even}: 256 · 2^7 sign patterns · 2 shifts = 2^16. Decoding
   a 16-bit code: abs index (8 bits) | shift (1 bit) | 7 signs, the 8th sign set by the parity (our bit
   layout; the official one interleaves the signs for its kernel). Nearest point, exact: for each shift and
   each a ∈ A the best signs are those of the input, and when their parity is wrong the cheapest single
   flip (cost 4 min_i |y_i| a_i) — 256 candidates instead of 65,536, tested equal to brute force.
3. BlockLDLQ, the vector form of LDLQ: H̃ = L D Lᵀ with L unit lower block-triangular in 8 × 8 blocks;
   groups of 8 columns, last to first as the official code does, Ŵ_k = Q(W_k + (W_{>k} − Ŵ_{>k}) L_{>k,k}),
   Q the nearest codebook point per row. Then `tune_iters` passes of block coordinate descent
   Ŵ_k ← Q(Ŵ_k + (W − Ŵ) H_{:,k} H_kk⁻¹) (the official `quip_tune_iters`, default 10).
4. One scale per layer (the paper's choice): W̃ is divided by RMS(W̃) / opt_scale (E8P 1.03, the official
   value; `scale_override` replaces it, e.g. 0.9 as in the official Llama-2 example), stored as float16.
3 and 4 bits: residual vector quantization (RVQ) as in the official code: the E8P point, then the
residual × 2.04 rounded to "E8P1B" (the 241 E8 points of norm² ≤ 2 and 15 of ±2e_i: 8 bits; scale 0.98)
for 3 bits, or the residual × 3.45 rounded to E8P again for 4 bits: 24 or 32 bits per 8 weights.

Storage (the ledger): the codes (16/24/32 bits per 8 weights), the two sign vectors at 1 bit per entry
and the 16-bit layer scale. (The official checkpoints keep SU, SV in float16 because its fine-tuning
makes them real-valued; without fine-tuning they are signs.)

Fidelity: simplified. Not implemented: the fine-tuning stage (within-block fine-tuning during
quantization and end-to-end fine-tuning of the sign vectors, norms and head), the optional low-rank
correction and WH rescaling of the official code, the fused Q/K/V quantization with a shared Hessian, and
the CUDA kernels (weights are stored de-quantized). Dead inputs and damping follow `common/hessian.py`
(the official `regularize_H` adds 0.01 · mean diag H, the same damping).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import torch

from reference_impls.common.hadamard import RandomHadamard, split_order
from reference_impls.common.hessian import add_damping, block_ldl, mark_dead_inputs
from reference_impls.common.registry import Option, register

CODESZ = 8
# the 29 norm² 12 source vectors: five 3/2 and three 1/2, written as the positions of the 1/2 entries
NORM12_HALVES = ("123", "023", "013", "012", "367", "357", "347", "356", "346", "345", "267", "257", "247",
                 "256", "246", "245", "167", "157", "147", "156", "146", "045", "067", "057", "047", "056",
                 "046", "014", "237")
# (opt_scale, residual scale) per bit width, from the official codebooks
SCALES = {2: (1.03, None), 3: (0.98, 2.04), 4: (1.03, 3.45)}


# ---------------------------------------------------------------- the E8P codebook
@cache
def e8p_source() -> torch.Tensor:
    """The 256 absolute-value source vectors A (256, 8), float64: 227 of D̂8 (norm² ≤ 10), 29 of norm² 12."""
    halves = torch.tensor([0.5, 1.5, 2.5], dtype=torch.float64)  # |x_i| ≤ 5/2 when ‖x‖² ≤ 10
    grid = torch.cartesian_prod(*[halves] * CODESZ)  # (3^8, 8)
    d8 = grid[grid.pow(2).sum(-1) <= 10]  # every abs vector has sign patterns of even sum
    norm12 = torch.full((len(NORM12_HALVES), CODESZ), 1.5, dtype=torch.float64)
    for r, pos in enumerate(NORM12_HALVES):
        norm12[r, [int(p) for p in pos]] = 0.5
    return torch.cat([d8, norm12])


def e8p_decode(codes: torch.Tensor) -> torch.Tensor:
    """16-bit codes (...) → points (..., 8): abs index << 8 | shift bit << 7 | signs of coordinates 0-6."""
    A = e8p_source().to(codes.device)
    a = A[codes >> 8]  # (..., 8)
    bits = (codes[..., None] >> torch.arange(7, device=codes.device)) & 1
    s = torch.cat([1 - 2 * bits, torch.ones_like(bits[..., :1])], -1).to(a.dtype)  # (..., 8)
    odd = torch.remainder((s * a).sum(-1), 2) != 0  # the 8th sign makes Σ σ(a) even (a point of D̂8)
    s[..., 7] = torch.where(odd, -1.0, 1.0)
    shift = torch.where((codes >> 7) & 1 == 1, -0.25, 0.25).to(a.dtype)
    return s * a + shift[..., None]


@cache
def e8p_grid() -> torch.Tensor:
    """All 2^16 codebook points, row c = e8p_decode(c), float64 (65536, 8)."""
    return e8p_decode(torch.arange(1 << 16))


def _nearest_d8hat(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Nearest point of {σ(a): a ∈ A, Σσ(a) even} to each row of y (N, 8) → (distance², abs index, signs)."""
    A = e8p_source().to(y.device, y.dtype)  # (256, 8)
    a, s = y.abs(), torch.where(y < 0, -1.0, 1.0).to(y.dtype)  # best signs: those of y
    dist = a.pow(2).sum(-1, keepdim=True) - 2 * a @ A.t() + A.pow(2).sum(-1)  # (N, 256)
    flip_cost = a[:, :1] * A[:, 0]  # (N, 256): min_i a_i A_i, the cheapest single sign flip
    for i in range(1, CODESZ):  # a loop of 8 minima: 4x faster than a (N, 256, 8) reduction
        flip_cost = torch.minimum(flip_cost, a[:, i:i + 1] * A[:, i])
    odd = torch.remainder(s @ A.t(), 2) != 0  # wrong parity with y's signs
    dist = dist + 4 * flip_cost * odd
    best = dist.argmin(-1)  # (N,)
    rows = torch.arange(y.shape[0], device=y.device)
    flip = odd[rows, best]
    flip_at = (a * A[best]).argmin(-1)  # (N,)
    s[rows[flip], flip_at[flip]] *= -1
    return dist[rows, best], best, s


def e8p_quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact nearest E8P point of each row of x (N, 8) → (points (N, 8), 16-bit codes (N,))."""
    (d_plus, i_plus, s_plus), (d_minus, i_minus, s_minus) = _nearest_d8hat(x - 0.25), _nearest_d8hat(x + 0.25)
    minus = d_minus < d_plus  # (N,): the −1/4 coset is nearer
    idx, s = torch.where(minus, i_minus, i_plus), torch.where(minus[:, None], s_minus, s_plus)
    sign_bits = ((s[:, :7] < 0).long() << torch.arange(7, device=x.device)).sum(-1)
    codes = (idx << 8) | (minus.long() << 7) | sign_bits
    return e8p_decode(codes).to(x.dtype), codes


@cache
def e81b_grid() -> torch.Tensor:
    """The 8-bit residual codebook of 3-bit QuIP#: 0, the 240 roots of E8 and ±2e_i without −2e_7 (256, 8)."""
    eye = torch.eye(CODESZ, dtype=torch.float64)
    i, j = torch.triu_indices(CODESZ, CODESZ, 1)
    pairs = torch.cat([sa * eye[i] + sb * eye[j] for sa in (1, -1) for sb in (1, -1)])  # 112 (±1, ±1, 0...)
    signs = 1 - 2 * ((torch.arange(256)[:, None] >> torch.arange(CODESZ)) & 1).double()
    halves = 0.5 * signs[signs.prod(-1) > 0]  # 128 (±1/2)^8 with an even number of minus signs
    return torch.cat([torch.zeros(1, CODESZ, dtype=torch.float64), pairs, halves, 2 * eye, -2 * eye[:7]])


def nearest_in(x: torch.Tensor, grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Brute-force nearest row of `grid` (K, 8) to each row of x (N, 8) → (points, indices)."""
    G = grid.to(x.device, x.dtype)
    idx = (2 * x @ G.t() - G.pow(2).sum(-1)).argmax(-1)
    return G[idx], idx


@dataclass(frozen=True)
class Codebook:
    """E8P (2 bits) or E8P + a residual stage (3, 4 bits) over 8-vectors; codes (N, stages)."""

    bits: int

    @property
    def opt_scale(self) -> float:
        return SCALES[self.bits][0]

    def quantize(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q, c = e8p_quantize(x)
        if self.bits == 2:
            return q, c[:, None]
        r = SCALES[self.bits][1]
        q2, c2 = e8p_quantize((x - q) * r) if self.bits == 4 else nearest_in((x - q) * r, e81b_grid())
        return q + q2 / r, torch.stack([c, c2], -1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        q = e8p_decode(codes[..., 0])
        if self.bits == 2:
            return q
        second = e8p_decode(codes[..., 1]) if self.bits == 4 else e81b_grid().to(codes.device)[codes[..., 1]]
        return q + second / SCALES[self.bits][1]


# ---------------------------------------------------------------- incoherence processing and block LDLQ
def rht(W: torch.Tensor, H: torch.Tensor, *, seed: int) -> tuple[torch.Tensor, torch.Tensor, RandomHadamard,
                                                                   RandomHadamard]:
    """W̃ = Q_outᵀ W Q_in (out, in), H̃ = Q_inᵀ H Q_in (in, in), Q = diag(s) H_n / √n, and the two rotations."""
    Q_out = RandomHadamard.draw(W.shape[0], seed=2 * seed)
    Q_in = RandomHadamard.draw(W.shape[1], seed=2 * seed + 1)
    Wt = Q_out.apply(Q_in.apply(W).t()).t()  # (Q_outᵀ (W Q_in)) = ((W Q_in)ᵀ Q_out)ᵀ
    Ht = Q_in.apply(Q_in.apply(H).t()).t()
    return Wt, Ht, Q_out, Q_in


def inverse_rht(Wt: torch.Tensor, Q_out: RandomHadamard, Q_in: RandomHadamard) -> torch.Tensor:
    """W = Q_out W̃ Q_inᵀ."""
    return Q_out.apply_transposed(Q_in.apply_transposed(Wt).t()).t()


def block_ldlq(W: torch.Tensor, H: torch.Tensor, codebook: Codebook, *, tune_iters: int = 0
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """BlockLDLQ of W (out, in), H (in, in) positive definite → (Ŵ (out, in), codes (out, in/8, stages))."""
    m, n = W.shape
    b = CODESZ
    L, _ = block_ldl(H, b)  # (n, n), H = L D Lᵀ
    hatW = torch.zeros_like(W)
    codes = torch.zeros(m, n // b, 1 if codebook.bits == 2 else 2, dtype=torch.long, device=W.device)
    for k in reversed(range(n // b)):  # the official order: last group first
        j, j2 = b * k, b * (k + 1)
        x = W[:, j:j2] + (W[:, j2:] - hatW[:, j2:]) @ L[j2:, j:j2]  # (m, 8): feedback of later groups' errors
        hatW[:, j:j2], codes[:, k] = codebook.quantize(x)
    Hkk_inv = torch.linalg.inv(H.reshape(n // b, b, n // b, b).diagonal(dim1=0, dim2=2).permute(2, 0, 1))
    for _ in range(tune_iters):  # block coordinate descent on tr((W − Ŵ) H (W − Ŵ)ᵀ)
        for k in reversed(range(n // b)):
            j, j2 = b * k, b * (k + 1)
            x = hatW[:, j:j2] + (W - hatW) @ H[:, j:j2] @ Hkk_inv[k]  # the block's unconstrained optimum
            hatW[:, j:j2], codes[:, k] = codebook.quantize(x)
    return hatW, codes


@dataclass
class QuipSharpResult:
    weight: torch.Tensor  # de-quantized Ŵ = Q_out · scale · decode(codes) · Q_inᵀ, (out, in)
    codes: torch.Tensor  # (out, in / 8, stages) int64: 16-bit E8P code, then the residual's code
    scale: float  # the layer's scale (a float16 value)
    Q_out: RandomHadamard  # its signs are stored (1 bit each)
    Q_in: RandomHadamard
    bits: int


def reconstruct(res: QuipSharpResult) -> torch.Tensor:
    """The weight from what is stored: codes, the layer scale and the two sign vectors."""
    Wt = Codebook(res.bits).decode(res.codes).reshape(res.codes.shape[0], -1) * res.scale  # (out, in)
    return inverse_rht(Wt, res.Q_out, res.Q_in)


def quip_sharp_quantize(weight: torch.Tensor, hessian: torch.Tensor, *, bits: int = 2, seed: int = 0,
                        damp: float = 0.01, tune_iters: int = 10, scale_override: float = 0.0
                        ) -> QuipSharpResult:
    """QuIP#: RHT, per-layer scale, BlockLDLQ with the E8P (RVQ) codebook, inverse RHT (float64 inside)."""
    if bits not in SCALES:
        raise ValueError(f"--bits must be 2, 3 or 4 (E8P, E8P + E8P1B, E8P + E8P), got {bits}")
    if weight.shape[1] % CODESZ:
        raise ValueError(f"QuIP# needs in_features divisible by {CODESZ}, got {weight.shape[1]}")
    W, H = weight.double().clone(), hessian.double().clone()
    W[:, mark_dead_inputs(H)] = 0  # before the rotation spreads the dead inputs over all columns
    add_damping(H, damp)
    Wt, Ht, Q_out, Q_in = rht(W, H, seed=seed)
    cb = Codebook(bits)
    rms = Wt.pow(2).mean().sqrt()
    scale = float((rms / (scale_override or cb.opt_scale)).to(torch.float16))  # stored in 16 bits
    hatWt, codes = block_ldlq(Wt / scale, Ht, cb, tune_iters=tune_iters)
    hatW = inverse_rht(hatWt * scale, Q_out, Q_in)
    return QuipSharpResult(hatW.to(weight.dtype), codes, scale, Q_out, Q_in, bits)


def quip_sharp_bits(n_out: int, n_in: int, *, bits: int) -> int:
    """Stored bits of one matrix: bits · 8 per code of 8 weights, 1 bit per sign, a 16-bit scale."""
    return n_out * n_in * bits + n_out + n_in + 16


# ---------------------------------------------------------------- model-level entry
@register(
    "quip-sharp", family="quantization", papers=["quip-sharp"], fidelity="simplified",
    summary="Random Hadamard incoherence + BlockLDLQ over 8-vectors, E8P lattice codebook (RVQ at 3-4 bits)",
    options={
        "bits": Option(2, "bits per weight: 2 (E8P), 3 (E8P + E8P1B), 4 (E8P + E8P)"),
        "tune_iters": Option(10, "block coordinate-descent passes after BlockLDLQ (official default 10)"),
        "scale_override": Option(0.0, "codebook scale: RMS(W̃) / this (0 = the codebook's opt_scale)"),
        "damp": Option(0.01, "dampening, as a fraction of mean diag(H)"),
    },
    bench=[{"bits": 2}, {"bits": 3}, {"bits": 4}, {"bits": 2, "tune_iters": 0}],
    bench_models=("causal",),
)
def run_quip_sharp(ctx, *, bits: int, tune_iters: int, scale_override: float, damp: float) -> dict:
    if bits not in SCALES:
        raise ValueError(f"--bits must be 2, 3 or 4, got {bits}")
    if tune_iters < 0 or scale_override < 0:
        raise ValueError("--tune-iters and --scale-override must be >= 0")
    for mod in ctx.adapter.linears(ctx.adapter.blocks(ctx.model)[0]).values():
        for n in mod.weight.shape:
            split_order(n)  # a clear error before any work on a size without a Hadamard matrix

    def process(block) -> None:
        for i, name in enumerate(block.linears):
            w = block.weight(name)
            res = quip_sharp_quantize(w, block.stats[name].hessian, bits=bits, seed=ctx.seed * 1000 +
                                      block.index * 16 + i, damp=damp, tune_iters=tune_iters,
                                      scale_override=scale_override)
            block.set_weight(name, res.weight)
            ctx.ledger.add(f"{block.name}.{name}", w.numel(), quip_sharp_bits(*w.shape, bits=bits))

    ctx.walk(process, stats=("hessian",))
    return {"codebook": {2: "E8P", 3: "E8P+E8P1B", 4: "E8P+E8P"}[bits]}
