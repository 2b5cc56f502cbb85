"""LUT-GEMM: "LUT-GEMM: Quantized Matrix Multiplication based on LUTs for Efficient Inference in
Large-Scale Generative Language Models" (Park, Park, Kim, Lee, Kim, Kwon, Kwon, Kim, Lee, Lee; arXiv
2206.09557, ICLR 2024); catalog record `lut-gemm`.

Binary-coding quantization (BCQ): each group of g weights of a row is w ≈ Σ_{i=1}^{q} α_i b_i + z with
b_i ∈ {−1, +1}^g, α_i ≥ 0 and an offset z (eq. 2-3; with the offset BCQ also covers uniform grids).
The product then needs no de-quantization: split x into chunks of μ = 8 inputs, tabulate for each chunk
the 2^μ signed sums Σ_t ±x_t once (the lookup table, eq. 4), and every binary row-chunk becomes one
table read: y_r = Σ_i Σ_chunks α_{i,r} · LUT[chunk, pattern(b_i, r, chunk)] + z_r · Σ x.

Implemented (fidelity: simplified): BCQ fitted per row and group by the greedy residual method then
alternating least squares for (α, z) with the codes re-chosen among the 2^q sign patterns (Xu et al.
2018, the method the paper cites), the LUT product in PyTorch (chunk tables, pattern indices, gathers)
tested equal to the de-quantized matmul, and its CPU time at batch 1 against a dense float32 matmul and
an int8 matmul (`torch._int_mm`) on a 4096 × 4096 layer, reported with every run (`lut_timing`).
Not implemented: the CUDA kernel (the paper's speed-ups are GPU figures; a PyTorch gather on CPU is
not expected to beat BLAS, and the measured figures say by how much), per-layer bit allocation.
Storage: q bits per weight, q 16-bit α and one 16-bit z per row per group.
"""

from __future__ import annotations

import itertools
import time

import torch

from reference_impls.common.registry import Option, register
from reference_impls.common.storage import SCALE_BITS, group_width

MU = 8  # inputs per lookup-table chunk (the paper's μ)


# ---------------------------------------------------------------- pure core: binary-coding quantization
def bcq_fit(w: torch.Tensor, *, q: int, iters: int = 10, offset: bool = True):
    """BCQ of rows w (rows, g): (alpha (rows, q), B (rows, g, q) ±1, z (rows,)) with w ≈ B α + z."""
    rows, g = w.shape
    z = w.mean(1) if offset else torch.zeros(rows, dtype=w.dtype)
    r = w - z[:, None]
    alpha, B = [], []
    for _ in range(q):  # greedy: each bit-plane fits the residual's signs with its mean magnitude
        b = torch.where(r >= 0, 1.0, -1.0).to(w.dtype)
        a = r.abs().mean(1)
        alpha.append(a)
        B.append(b)
        r = r - a[:, None] * b
    alpha, B = torch.stack(alpha, 1), torch.stack(B, 2)  # (rows, q), (rows, g, q)
    patterns = torch.tensor(list(itertools.product((-1.0, 1.0), repeat=q)), dtype=w.dtype)  # (2^q, q)
    for _ in range(iters):
        # (α, z) by least squares given B, then each weight takes its nearest of the 2^q levels
        A = torch.cat([B, torch.ones(rows, g, 1, dtype=w.dtype)], 2) if offset else B  # (rows, g, q+1)
        sol = torch.linalg.lstsq(A, w[:, :, None]).solution[:, :, 0]  # (rows, q[+1])
        alpha = sol[:, :q]
        z = sol[:, q] if offset else z
        levels = alpha @ patterns.t() + z[:, None]  # (rows, 2^q)
        B = patterns[(w[:, :, None] - levels[:, None, :]).abs().argmin(-1)]  # (rows, g, q)
    return alpha, B, z


def bcq_quantize(weight: torch.Tensor, *, bits: int = 3, group_size: int = 128, offset: bool = True,
                 iters: int = 10):
    """Groups of `group_size` inputs per row: (de-quantized weight, alpha (out, G, q), B (out, in, q), z
    (out, G))."""
    W = weight.double()
    n_out, n_in = W.shape
    gs = group_width(group_size, n_in, must_divide=True)
    Wg = W.reshape(n_out, n_in // gs, gs).reshape(-1, gs)  # (out·G, g)
    alpha, B, z = bcq_fit(Wg, q=bits, iters=iters, offset=offset)
    deq = (B @ alpha[:, :, None])[:, :, 0] + z[:, None]  # (out·G, g): Σ α_i b_i + z
    G = n_in // gs
    return (deq.reshape(n_out, n_in).to(weight.dtype), alpha.reshape(n_out, G, bits),
            B.reshape(n_out, n_in, bits), z.reshape(n_out, G))


# ---------------------------------------------------------------- pure core: the LUT product
def chunk_patterns(B: torch.Tensor) -> torch.Tensor:
    """±1 codes (out, in, q) → table indices (q, out, in/μ): bit t of a chunk's index = [b_t = +1]."""
    n_out, n_in, q = B.shape
    bitsets = (B > 0).long().reshape(n_out, n_in // MU, MU, q)
    return (bitsets << torch.arange(MU)[None, None, :, None]).sum(2).permute(2, 0, 1)


def build_lut(x: torch.Tensor) -> torch.Tensor:
    """x (batch, in) → LUT (batch, in/μ, 2^μ): every signed sum of each chunk of μ inputs."""
    signs = torch.tensor(list(itertools.product((-1.0, 1.0), repeat=MU)), dtype=x.dtype).flip(1)
    # row p of `signs` is pattern p: sign of input t is + exactly when bit t of p is set
    return x.reshape(x.shape[0], -1, MU) @ signs.t()


def lut_matmul(x: torch.Tensor, alpha, patterns, z, *, group_size: int) -> torch.Tensor:
    """y = x Ŵᵀ without forming Ŵ: x (batch, in); alpha (out, G, q); patterns (q, out, in/μ); z (out, G)."""
    lut = build_lut(x)  # (batch, C, 256), C = in/μ chunks
    q, n_out, C = patterns.shape
    per_group = group_size // MU  # chunks per group
    y = torch.zeros(x.shape[0], n_out, dtype=x.dtype)
    chunk = torch.arange(C)
    for i in range(q):
        reads = lut[:, chunk[None, :], patterns[i]]  # (batch, out, C): one table read per row-chunk
        y += (reads.reshape(x.shape[0], n_out, -1, per_group).sum(-1) * alpha[None, :, :, i]).sum(-1)
    xsum = x.reshape(x.shape[0], -1, group_size).sum(-1)  # (batch, G): the offset's contribution
    return y + xsum @ z.t()


def lut_timing(*, n: int = 4096, bits: int = 3, group_size: int = 128, repeats: int = 5) -> dict:
    """Median CPU seconds of one batch-1 product on an n × n layer: LUT, dense float32, int8."""
    g = torch.Generator().manual_seed(0)
    W = torch.randn(n, n, generator=g)
    x = torch.randn(1, n, generator=g)
    G = n // group_size  # random codes: the product's cost does not depend on their values
    B = torch.where(torch.rand(n, n, bits, generator=g) < 0.5, -1.0, 1.0)
    pats, alpha, z = chunk_patterns(B), torch.rand(n, G, bits, generator=g), torch.randn(n, G, generator=g)
    w8 = torch.randint(-127, 128, (n, n), dtype=torch.int8, generator=g)
    x8 = torch.randint(-127, 128, (32, n), dtype=torch.int8, generator=g)

    def median(fn):
        fn()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return sorted(times)[len(times) // 2]

    return {"shape": [n, n], "bits": bits, "group_size": group_size, "threads": torch.get_num_threads(),
            "lut_s": median(lambda: lut_matmul(x, alpha, pats, z, group_size=group_size)),
            "dense_fp32_s": median(lambda: x @ W.t()),
            # torch._int_mm needs at least 17 rows on CPU: one 32-row product, the batch-1 cost bounded above
            "int8_s_32rows": median(lambda: torch._int_mm(x8, w8.t().contiguous()))}


# ---------------------------------------------------------------- model-level entry
@register(
    "lut-gemm", family="quantization", papers=["lut-gemm"], fidelity="simplified",
    summary="Binary-coding quantization (Σ α_i b_i + z per group) and its lookup-table matrix product",
    options={
        "bits": Option(3, "binary planes q per weight (1-4)"),
        "group_size": Option(128, "input columns per group (must divide the row)"),
        "offset": Option(True, "an offset z per group (asymmetric BCQ)"),
        "iters": Option(10, "alternating refinement iterations"),
    },
    bench=[{"bits": b} for b in (2, 3, 4)],
    bench_models=("causal",),
)
def run_lut_gemm(ctx, *, bits, group_size, offset, iters) -> dict:
    if not 1 <= bits <= 4:
        raise ValueError(f"--bits must be between 1 and 4, got {bits}")
    if group_size != -1 and group_size % MU:
        raise ValueError(f"--group-size must be a multiple of {MU} (the LUT chunk), got {group_size}")

    def quantize(name: str, w: torch.Tensor) -> torch.Tensor:
        G = w.shape[1] // group_width(group_size, w.shape[1], must_divide=True)
        per_group = bits * SCALE_BITS + (SCALE_BITS if offset else 0)
        ctx.ledger.add(name, w.numel(), w.numel() * bits + w.shape[0] * G * per_group)
        return bcq_quantize(w, bits=bits, group_size=group_size, offset=offset, iters=iters)[0]

    ctx.map_linears(quantize)
    return {"lut_timing": lut_timing(bits=bits, group_size=128)}
