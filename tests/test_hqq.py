"""HQQ: the half-quadratic zero-point optimisation decreases its objective and beats RTN."""

from functools import partial

import pytest
import torch

from reference_impls.quantization.hqq import (
    hqq_bits_per_weight,
    hqq_quantize,
    hqq_quantize_detailed,
    shrink_lp,
)


def minmax_rtn(W, bits, group_size):
    """Round-to-nearest on the GPTQ grid (range includes 0, integer zero point), written out here."""
    out_f, in_f = W.shape
    Wg = W.reshape(out_f, -1, group_size)
    maxq = 2**bits - 1
    xmin = Wg.amin(-1, keepdim=True).clamp(max=0)
    xmax = Wg.amax(-1, keepdim=True).clamp(min=0)
    s = (xmax - xmin) / maxq
    z = torch.round(-xmin / s)
    return (s * (torch.clamp(torch.round(Wg / s) + z, 0, maxq) - z)).reshape(out_f, in_f)


def heavy_tailed(seed, shape=(256, 512)):
    g = torch.Generator().manual_seed(seed)
    # Gaussian weights with a sprinkling of 10x outliers, as trained LLM weights have
    w = torch.randn(*shape, generator=g)
    mask = torch.rand(*shape, generator=g) < 0.005
    return w + mask * torch.randn(*shape, generator=g) * 10


def test_shrink_operator_by_hand():
    # p = 1 is ordinary soft-thresholding at 1/β
    x = torch.tensor([-2.0, -0.05, 0.0, 0.05, 2.0])
    assert torch.allclose(shrink_lp(x, 10.0, 1.0), torch.tensor([-1.9, 0.0, 0.0, 0.0, 1.9]))
    # p = 0.5, β = 2: 4 - 4^(-0.5)/2 = 3.75; 0.1 - 0.1^(-0.5)/2 < 0 -> 0
    assert torch.allclose(shrink_lp(torch.tensor([4.0, 0.1]), 2.0, 0.5), torch.tensor([3.75, 0.0]))


def test_objective_decreases_over_iterations():
    W = heavy_tailed(0)
    r = hqq_quantize_detailed(W, bits=4, group_size=64, iters=20)
    accepted = r.trace if len(r.trace) == 20 else r.trace[:-1]  # the last tried may be rejected
    assert all(b < a for a, b in zip(accepted, accepted[1:], strict=False))
    assert accepted[-1] < 0.97 * r.trace[0]
    # the sparsity-promoting lp objective the splitting targets goes down as well
    assert r.lp_trace[len(accepted) - 1] < r.lp_trace[0]
    # the returned zero is that of the last update, as the hqq package returns it: after 5 improving
    # iterations it is the zero a 6th iteration would measure, not the best of the 5 measured
    r5, r6 = (hqq_quantize_detailed(W, bits=4, group_size=64, iters=n) for n in (5, 6))
    assert len(r5.trace) == 5 and r5.trace == r6.trace[:5]
    assert (W - r5.weight).abs().mean().item() == r6.trace[5] != min(r5.trace)


@pytest.mark.parametrize("bits", [3, 4])
def test_beats_rtn_reconstruction(bits):
    W = heavy_tailed(1)
    hqq = hqq_quantize(W, bits=bits, group_size=64)
    rtn = minmax_rtn(W, bits, 64)
    first = hqq_quantize(W, bits=bits, group_size=64, iters=0)  # min-max start, no update
    # in the lp (p = 0.7) objective and the l1 error HQQ targets, it beats RTN clearly
    for p in (0.7, 1.0):
        e_hqq = (W - hqq).abs().pow(p).mean()
        assert e_hqq < 0.97 * (W - rtn).abs().pow(p).mean()
        assert e_hqq < 0.99 * (W - first).abs().pow(p).mean()
    # in squared error too on outlier-free Gaussian weights (with 0.5% 10x outliers at 3 bits
    # it gives some squared error back on the outliers: the price of the sparsity-promoting loss)
    G = torch.randn(256, 512, generator=torch.Generator().manual_seed(2))
    e2 = (G - hqq_quantize(G, bits=bits, group_size=64)).pow(2).mean()
    assert e2 < 0.95 * (G - minmax_rtn(G, bits, 64)).pow(2).mean()


def test_grid_and_storage():
    W = torch.randn(8, 128)
    q = hqq_quantize_detailed(W, bits=3, group_size=32)
    # every de-quantized value lies on its group's 8-level grid s·(k - z)
    k = q.weight.reshape(8, 4, 32) / q.scale[..., None] + q.zero[..., None]
    assert torch.allclose(k, k.round(), atol=1e-4) and k.round().min() >= 0 and k.round().max() <= 7
    assert hqq_bits_per_weight(4096, bits=4, group_size=64) == 4.5


# ---------------------------------------------------------------- against the hqq package
def _hqq_case(name, shape=(64, 512)):
    g = torch.Generator().manual_seed(11)
    if name == "unit":  # unit-scale Gaussian weights
        return torch.randn(*shape, generator=g)
    if name == "small":  # the scale of trained LLM weights
        return torch.randn(*shape, generator=g) * 0.02
    return heavy_tailed(12, shape)


def _hqq_reference(W, bits, group_size, opt_params):
    """The hqq package's Quantizer.quantize (axis=1, no bit packing, float zero) on CPU, de-quantized
    in float32; returns (weight, scale, zero) with scale and zero shaped (out, n_groups)."""
    quantize = pytest.importorskip("hqq.core.quantize", reason="hqq (dev extra) not installed")
    optimize = pytest.importorskip("hqq.core.optimize")
    Q = quantize.Quantizer
    orig = Q.optimize_weights
    if opt_params is not None:
        Q.optimize_weights = staticmethod(
            partial(optimize.optimize_weights_proximal_legacy, opt_params=opt_params)
        )
    try:
        Wq, meta = Q.quantize(
            W,
            nbits=bits,
            group_size=group_size,
            axis=1,
            optimize=True,
            round_zero=False,
            bitpack=False,
            device="cpu",
        )
    finally:
        Q.optimize_weights = orig
    out_f, in_f = W.shape
    w = ((Wq - meta["zero"]) * meta["scale"]).reshape(W.shape)
    n_groups = 1 if group_size is None else in_f // group_size
    return w, meta["scale"].reshape(out_f, n_groups), meta["zero"].reshape(out_f, n_groups)


@pytest.mark.parametrize("case", ["unit", "small", "heavy"])
@pytest.mark.parametrize(("bits", "group_size"), [(4, 64), (3, 64), (2, 32), (8, 128), (4, None)])
def test_matches_hqq_package(case, bits, group_size):
    # hqq 0.2.7+ keeps beta constant: kappa = 1 here; its default optimiser params otherwise
    W = _hqq_case(case)
    want_w, want_s, want_z = _hqq_reference(W, bits, group_size, None)
    r = hqq_quantize_detailed(W, bits=bits, group_size=group_size or -1, kappa=1.0)
    assert torch.equal(r.zero, want_z) and torch.equal(r.scale, want_s)
    assert torch.equal(r.weight, want_w)


@pytest.mark.parametrize("case", ["unit", "small"])
def test_matches_hqq_package_with_other_params(case):
    W = _hqq_case(case)
    params = {"lp_norm": 0.5, "beta": 5.0, "kappa": 1.0, "iters": 7}
    want_w, _, want_z = _hqq_reference(W, 4, 64, params)
    r = hqq_quantize_detailed(W, bits=4, group_size=64, lp_norm=0.5, beta=5.0, kappa=1.0, iters=7)
    assert torch.equal(r.zero, want_z) and torch.equal(r.weight, want_w)


@pytest.mark.parametrize("case", ["unit", "small"])
def test_growing_beta_matches_hqq_0_2_6_loop(case):
    """hqq <= 0.2.6's legacy loop (beta *= kappa after each update), transcribed around the installed
    package's own update step `optimize_weights_proximal_legacy_step`."""
    optimize = pytest.importorskip("hqq.core.optimize", reason="hqq (dev extra) not installed")
    W = _hqq_case(case)
    Wg = W.reshape(-1, 64)
    denom = Wg.amax(1, keepdim=True) - Wg.amin(1, keepdim=True)
    scale = (15 / denom).clamp(max=2e4)
    zero = -Wg.amin(1, keepdim=True) * scale
    beta, best = 10.0, 1e4
    for _ in range(20):
        W_r, W_q, zero, scale = optimize.optimize_weights_proximal_legacy_step(
            Wg, scale, zero, [0, 15], beta, 0.7, 1
        )
        beta *= 1.01
        err = float(torch.abs(Wg - W_r).mean())
        if err < best:
            best = err
        else:
            break
    want = ((torch.round(Wg * scale + zero).clamp(0, 15) - zero) * (1.0 / scale)).reshape(W.shape)
    r = hqq_quantize_detailed(W, bits=4, group_size=64, kappa=1.01)
    assert torch.equal(r.zero, zero.reshape(64, -1)) and torch.equal(r.weight, want)
