"""QuIP: "QuIP: 2-Bit Quantization of Large Language Models With Guarantees" (Chee, Cai, Kuleshov,
De Sa; arXiv 2307.13304, NeurIPS 2023); catalog record `quip`.

Rounding is easier when the weights and the Hessian proxy H are *incoherent* (no entry much larger
than average, eigenvectors spread over all coordinates). QuIP multiplies W by random orthogonal
matrices on both sides, W̃ = U W Vᵀ and H̃ = V H Vᵀ (incoherence processing, Algorithm 1), rounds W̃
with LDLQ, the adaptive rounding that is optimal within its class (Theorem 1): with the LDL
decomposition H̃ = (Ů + I) D (Ů + I)ᵀ, Ů strictly upper triangular,

    Ŵ_k = Q(W_k + (W_{1:k−1} − Ŵ_{1:k−1}) Ů_{1:k−1, k})         (eq. 2, column by column)

and undoes the rotation, Ŵ = Uᵀ Ŵ̃ V. LDLQ is the same rounding as GPTQ/OPTQ (Theorem 6), which the
tests check: with the identity rotation this module's LDLQ equals `gptq_quantize` of the same H.

Implemented (fidelity: simplified): the LDL decomposition (by a Cholesky factorisation of the
reversed H), LDLQ with GPTQ's conventions (dead inputs, damping 0.01 · mean diag H, per-row min-max
asymmetric grid of the whole row of W̃), incoherence processing with U and V Kronecker products of two
Haar-random orthogonal matrices of sizes near √n (the paper's efficient construction), or a random
Hadamard (QuIP#'s choice; `--rotation hadamard`) or none (`identity`: plain LDLQ, the GPTQ baseline).
Not implemented: the diagonal rescaling D̃ of the pre-processing, the greedy local-search
post-processing (LDLQ_RG) and the packed 2-bit kernels (weights are stored de-quantized); the rotations
are regenerated from a seed, so their storage is not counted.
"""

from __future__ import annotations

import math

import torch

from reference_impls.common.hadamard import RandomHadamard, split_order
from reference_impls.common.hessian import add_damping, mark_dead_inputs
from reference_impls.common.registry import Option, register
from reference_impls.quantization.rtn import fake_quantize, minmax_params

ROTATIONS = ("kron", "hadamard", "identity")


# ---------------------------------------------------------------- pure core
def ldl_upper(H: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Ů, d) with H = (Ů + I) diag(d) (Ů + I)ᵀ, Ů strictly upper triangular (H positive definite).

    Reversing rows and columns turns this 'UDUᵀ' form into a Cholesky factorisation: P H P = C Cᵀ,
    so H = (P C P)(P C P)ᵀ with P C P upper triangular."""
    C = torch.linalg.cholesky(H.flip(0, 1))
    M = C.flip(0, 1)  # upper triangular, H = M Mᵀ
    diag = M.diagonal()
    return M / diag[None, :] - torch.eye(H.shape[0], dtype=H.dtype, device=H.device), diag.pow(2)


def ldlq(weight: torch.Tensor, hessian: torch.Tensor, *, bits: int = 2, damp: float = 0.01) -> torch.Tensor:
    """LDLQ rounding (eq. 2) of W (out, in) on a per-row min-max grid; H (in, in) = 2/n Σ x xᵀ."""
    dtype = torch.promote_types(weight.dtype, torch.float32)
    W = weight.to(dtype).clone()  # (out, in)
    H = hessian.to(dtype).clone()  # (in, in)
    scale, zero = minmax_params(W, bits=bits, sym=False)  # (out,): from the whole row, as GPTQ's grid
    W[:, mark_dead_inputs(H)] = 0
    add_damping(H, damp)
    U, _ = ldl_upper(H)  # (in, in) strictly upper
    Q = torch.zeros_like(W)
    E = torch.zeros_like(W)  # W − Ŵ of the columns done so far
    maxq = 2**bits - 1
    for k in range(W.shape[1]):
        Q[:, k] = fake_quantize(W[:, k] + E[:, :k] @ U[:k, k], scale, zero, maxq)  # (out,)
        E[:, k] = W[:, k] - Q[:, k]
    return Q.to(weight.dtype)


def random_orthogonal(n: int, *, generator: torch.Generator) -> torch.Tensor:
    """A Haar-random orthogonal matrix (QR of a Gaussian, signs fixed by diag R), float64."""
    Qm, R = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    return Qm * torch.sign(R.diagonal())[None, :]


def kron_orthogonal(n: int, *, generator: torch.Generator) -> torch.Tensor:
    """U_a ⊗ U_b with a·b = n, a the largest divisor ≤ √n (the paper's cheap incoherence matrices)."""
    a = max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)
    U_a, U_b = random_orthogonal(a, generator=generator), random_orthogonal(n // a, generator=generator)
    return torch.kron(U_a, U_b)


def incoherence_matrix(n: int, rotation: str, *, seed: int) -> torch.Tensor:
    if rotation == "kron":
        return kron_orthogonal(n, generator=torch.Generator().manual_seed(seed))
    if rotation == "hadamard":
        return RandomHadamard.draw(n, seed=seed).matrix()  # diag(s) H / √n
    return torch.eye(n, dtype=torch.float64)


def quip_quantize(weight: torch.Tensor, hessian: torch.Tensor, *, bits: int = 2, rotation: str = "kron",
                  seed: int = 0, damp: float = 0.01) -> torch.Tensor:
    """QuIP: incoherence processing (W̃ = U W Vᵀ, H̃ = V H Vᵀ), LDLQ, Ŵ = Uᵀ Ŵ̃ V; same shape and dtype."""
    if rotation not in ROTATIONS:
        raise ValueError(f"--rotation must be one of {', '.join(ROTATIONS)}, got {rotation!r}")
    W, H = weight.double().clone(), hessian.double().clone()
    W[:, mark_dead_inputs(H)] = 0  # before the rotation spreads the dead inputs over all columns
    n_out, n_in = W.shape
    U = incoherence_matrix(n_out, rotation, seed=2 * seed)  # (out, out)
    V = incoherence_matrix(n_in, rotation, seed=2 * seed + 1)  # (in, in)
    Wt, Ht = U @ W @ V.t(), V @ H @ V.t()  # Algorithm 1
    return (U.t() @ ldlq(Wt, Ht, bits=bits, damp=damp) @ V).to(weight.dtype)


# ---------------------------------------------------------------- model-level entry
@register(
    "quip", family="quantization", papers=["quip"], fidelity="simplified",
    summary="Incoherence processing (random orthogonal U, V) + LDLQ adaptive rounding, 2-4 bits",
    options={
        "bits": Option(2, "bits per weight (2-8)"),
        "rotation": Option("kron", "incoherence matrices (identity = plain LDLQ, i.e. GPTQ)",
                           choices=ROTATIONS),
        "damp": Option(0.01, "dampening, as a fraction of mean diag(H)"),
    },
    bench=[{"bits": b, "rotation": r} for b in (2, 3, 4) for r in ("kron", "hadamard", "identity")],
    bench_models=("causal",),
)
def run_quip(ctx, *, bits: int, rotation: str, damp: float) -> dict:
    if not 2 <= bits <= 8:
        raise ValueError(f"--bits must be between 2 and 8, got {bits}")
    if rotation == "hadamard":
        for m in ctx.adapter.linears(ctx.adapter.blocks(ctx.model)[0]).values():
            for n in m.weight.shape:
                split_order(n)  # a clear error before any work on a size without a Hadamard matrix

    def process(block) -> None:
        for i, name in enumerate(block.linears):
            seed = ctx.seed * 1000 + block.index * 16 + i  # regenerated at load time: not stored
            new = quip_quantize(block.weight(name), block.stats[name].hessian, bits=bits, rotation=rotation,
                                seed=seed, damp=damp)
            block.set_weight(name, new)
            ctx.ledger.add_quantized(f"{block.name}.{name}", *new.shape, bits=bits, group_size=-1, sym=False)

    ctx.walk(process, stats=("hessian",))
    return {}
