"""QuIP#: the E8P codebook against the lattice's definition and brute force, the RHT round trip, block LDL
and BlockLDLQ by their defining properties, codes rebuild W, and the 2-bit layer error against QuIP / RTN."""

import pytest
import torch
from lowbit_fixtures import tiny_ctx

from reference_impls.common.hessian import block_ldl
from reference_impls.quantization.quip import quip_quantize
from reference_impls.quantization.quip_sharp import (
    Codebook,
    block_ldlq,
    e8p_grid,
    e8p_quantize,
    e81b_grid,
    inverse_rht,
    nearest_in,
    quip_sharp_bits,
    quip_sharp_quantize,
    reconstruct,
    rht,
    run_quip_sharp,
)
from reference_impls.quantization.rtn import rtn_quantize

F64 = torch.float64


def in_e8(y: torch.Tensor) -> torch.Tensor:
    """E8 = D8 ∪ (D8 + 1/2): all coordinates integers or all half-odd integers, and an even sum."""
    twice = 2 * y
    integral = (twice == twice.round()).all(-1)
    same_kind = (torch.remainder(twice, 2) == 0).all(-1) | (torch.remainder(twice, 2) == 1).all(-1)
    return integral & same_kind & (torch.remainder(y.sum(-1), 2) == 0)


def problem(seed, out=32, n_in=96, n=512):
    g = torch.Generator().manual_seed(seed)
    mix = torch.eye(n_in, dtype=F64) + 0.3 * torch.randn(n_in, n_in, generator=g, dtype=F64)
    x = torch.randn(n, n_in, generator=g, dtype=F64) @ mix * torch.logspace(-1, 1, n_in, dtype=F64)
    w = torch.randn(out, n_in, generator=g, dtype=F64)
    w[3, 7] = 12.0  # one outlier weight: a coherent matrix
    return w, 2.0 / n * x.t() @ x


def proxy(w, q, h):
    d = w - q
    return torch.trace(d @ h @ d.t()).item()


def test_e8p_codebook_is_the_papers_set():
    G = e8p_grid()
    assert G.shape == (1 << 16, 8) and torch.unique(G, dim=0).shape[0] == 1 << 16  # 2^16 distinct points
    assert in_e8(G - 0.25).all()  # a subset of E8 + 1/4
    for shift in (0.25, -0.25):  # two cosets D̂8 ± 1/4, D̂8 = D8 + 1/2: the points whose x ∓ 1/4 is half-odd
        coset = G[torch.remainder(G[:, 0] - shift, 1) == 0.5] - shift
        assert coset.shape[0] == 1 << 15 and (torch.remainder(coset, 1) == 0.5).all()
        sources = torch.unique(coset.abs(), dim=0)  # 256 source vectors × 128 sign patterns of even sum
        norms = sources.pow(2).sum(-1)
        assert sources.shape[0] == 256 and int((norms <= 10).sum()) == 227 and int((norms == 12).sum()) == 29
        assert (torch.remainder(coset.sum(-1), 2) == 0).all()
    E = e81b_grid()  # the 3-bit residual codebook: E8 points of norm² ≤ 2 and 15 of norm² 4
    assert torch.unique(E, dim=0).shape[0] == 256 and in_e8(E).all()
    assert int((E.pow(2).sum(-1) <= 2).sum()) == 241


def test_nearest_point_equals_brute_force():
    g = torch.Generator().manual_seed(0)
    unit = torch.randn(400, 8, generator=g, dtype=F64)
    x = torch.cat([unit, 3 * torch.randn(150, 8, generator=g, dtype=F64), e8p_grid()[::1400] + 1e-3])
    q, codes = e8p_quantize(x)
    brute = [nearest_in(c, e8p_grid()) for c in x.split(100)]  # against all 2^16 points
    q_bf, codes_bf = torch.cat([b[0] for b in brute]), torch.cat([b[1] for b in brute])
    assert torch.equal(codes, codes_bf) and torch.equal(q, q_bf)
    assert torch.equal(e8p_grid()[codes], q)  # the codes decode to the points
    for bits in (3, 4):  # RVQ: the residual stage is the nearest point of its own codebook too
        cb = Codebook(bits)
        qr, c = cb.quantize(x)
        assert torch.allclose(cb.decode(c), qr) and torch.equal(c[:, 0], codes)
        mse, mse_e8p = (unit - qr[:400]).pow(2).mean(), (unit - q[:400]).pow(2).mean()
        assert mse < mse_e8p / (2.5 if bits == 3 else 8)  # 0.089 → 0.029 (3 bits), 0.009 (4 bits)


def test_rht_is_orthogonal_and_round_trips():
    w, h = problem(1, out=24, n_in=96)  # 24 = 12 · 2 and 96 = 12 · 8: the Kronecker (Paley 12) Hadamards
    Wt, Ht, Q_out, Q_in = rht(w, h, seed=3)
    for Q, n in ((Q_out, 24), (Q_in, 96)):
        M = Q.matrix()
        assert torch.allclose(M @ M.t(), torch.eye(n, dtype=F64), atol=1e-12)
    assert torch.allclose(Wt, Q_out.matrix().t() @ w @ Q_in.matrix(), atol=1e-12)
    assert torch.allclose(inverse_rht(Wt, Q_out, Q_in), w, atol=1e-12)  # no rounding: exact round trip
    x = torch.randn(5, 96, dtype=F64)
    assert torch.allclose(Q_out.apply(x @ w.t()), (x @ Q_in.matrix()) @ Wt.t(), atol=1e-10)  # same layer
    assert proxy(w, 0 * w, h) == pytest.approx(proxy(Wt, 0 * Wt, Ht), rel=1e-12)
    assert Wt.abs().max() < 0.5 * w.abs().max()  # incoherence: the outlier is spread


def test_block_ldl_by_definition():
    _, h = problem(2, n_in=24)
    L, D = block_ldl(h, 8)
    assert torch.allclose(L @ torch.block_diag(*D) @ L.t(), h)
    assert torch.equal(L, L.tril())
    for k in range(3):
        assert torch.allclose(L[8 * k:8 * k + 8, 8 * k:8 * k + 8], torch.eye(8, dtype=F64), atol=1e-14)


def test_block_ldlq_without_feedback_is_nearest_rounding():
    g = torch.Generator().manual_seed(4)
    W = 1.2 * torch.randn(16, 32, generator=g, dtype=F64)
    blocks = [torch.randn(20, 8, generator=g, dtype=F64) for _ in range(4)]
    block_diagonal = torch.block_diag(*[b.t() @ b for b in blocks])  # no terms across groups of 8
    for H in (torch.eye(32, dtype=F64), block_diagonal):
        for tune_iters in (0, 3):
            hatW, codes = block_ldlq(W, H, Codebook(2), tune_iters=tune_iters)
            q, c = e8p_quantize(W.reshape(-1, 8))
            assert torch.equal(hatW, q.reshape(16, 32)) and torch.equal(codes.reshape(-1), c)


def test_block_ldlq_feedback_lowers_the_proxy_loss():
    w, h = problem(5, n_in=96)
    Wt, Ht, _, _ = rht(w, h, seed=0)
    Wt = Wt / Wt.pow(2).mean().sqrt()
    nearest = e8p_quantize(Wt.reshape(-1, 8))[0].reshape(Wt.shape)
    ldlq = block_ldlq(Wt, Ht, Codebook(2))[0]
    tuned = block_ldlq(Wt, Ht, Codebook(2), tune_iters=5)[0]
    assert proxy(Wt, tuned, Ht) < proxy(Wt, ldlq, Ht) < 0.8 * proxy(Wt, nearest, Ht)


@pytest.mark.parametrize("seed", [0, 1])
def test_two_bits_beat_quip_and_rtn_on_a_layer(seed):
    w, h = problem(seed)
    qs = proxy(w, quip_sharp_quantize(w, h, bits=2, seed=seed).weight, h)
    quip_had = proxy(w, quip_quantize(w, h, bits=2, rotation="hadamard", seed=seed), h)  # scalar LDLQ + RHT
    quip_kron = proxy(w, quip_quantize(w, h, bits=2, rotation="kron", seed=seed), h)
    rtn = proxy(w, rtn_quantize(w, bits=2), h)
    assert qs < 0.7 * min(quip_had, quip_kron) and qs < 0.2 * rtn
    q3, q4 = (proxy(w, quip_sharp_quantize(w, h, bits=b, seed=seed).weight, h) for b in (3, 4))
    assert q4 < q3 < qs


def test_codes_rebuild_the_weight_and_storage():
    w, h = problem(6, out=24)
    h[5, :] = h[:, 5] = 0.0  # a dead input
    for bits in (2, 3, 4):
        res = quip_sharp_quantize(w.float(), h.float(), bits=bits, seed=2, tune_iters=2)
        assert res.codes.shape == (24, 12, 1 if bits == 2 else 2)
        assert res.scale == float(torch.tensor(res.scale).half())  # a float16 scale
        assert torch.allclose(reconstruct(res).float(), res.weight, atol=1e-6)
    assert quip_sharp_bits(24, 96, bits=2) == 24 * 96 // 8 * 16 + 24 + 96 + 16
    with pytest.raises(ValueError, match="--bits"):
        quip_sharp_quantize(w, h, bits=5)


def test_model_entry_on_tiny_llama():
    ctx = tiny_ctx()
    w0 = ctx.model.model.layers[0].mlp.down_proj.weight.detach().clone()
    metrics = run_quip_sharp(ctx, bits=2, tune_iters=0, scale_override=0.0, damp=0.01)
    w1 = ctx.model.model.layers[0].mlp.down_proj.weight
    assert not torch.equal(w0, w1) and torch.isfinite(w1).all() and metrics["codebook"] == "E8P"
    assert 2 < ctx.ledger.bits_per_weight() < 2.1 and ctx.ledger.n_weights > 0
    with pytest.raises(ValueError, match="--bits"):
        run_quip_sharp(tiny_ctx(), bits=1, tune_iters=0, scale_override=0.0, damp=0.01)
