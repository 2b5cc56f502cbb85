"""GPTQ: oracles (a literal unbatched Algorithm 1, identity Hessian = RTN), the official code's
conventions, the layer error against RTN, and GPTQ vs RTN perplexity on the real causal LM."""

from __future__ import annotations

import pytest
import torch

from reference_impls.quantization.gptq import gptq, gptq_quantize
from reference_impls.quantization.rtn import fake_quantize, minmax_params, rtn_quantize


def correlated_problem(seed: int, out: int = 64, n_in: int = 256, n: int = 2048, skew: bool = False):
    """A weight and the Hessian 2/n XᵀX of inputs with correlated (optionally skewed-scale) columns."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, n_in, generator=g) @ (torch.eye(n_in) + 0.3 * torch.randn(n_in, n_in, generator=g))
    if skew:
        x = x * torch.logspace(-1.5, 1.0, n_in)[torch.randperm(n_in, generator=g)]
    w = torch.randn(out, n_in, generator=g)
    return w, 2.0 / n * x.t() @ x


def layer_error(w, q, h) -> float:
    d = (w - q).double()
    return torch.trace(d @ h.double() @ d.t()).item()


def unbatched_gptq(w, h, *, bits, group_size=-1, damp=0.01):
    """Algorithm 1 read literally: every column's error updates all later columns at once (float64)."""
    w, h = w.double().clone(), h.double().clone()
    n_in = w.shape[1]
    h += damp * h.diag().mean() * torch.eye(n_in, dtype=h.dtype)
    u = torch.linalg.cholesky(torch.linalg.inv(h), upper=True)
    q = torch.zeros_like(w)
    scale, zero = minmax_params(w, bits=bits, sym=False)
    for j in range(n_in):
        if group_size > 0 and j % group_size == 0:
            scale, zero = minmax_params(w[:, j : j + group_size], bits=bits, sym=False)
        q[:, j] = fake_quantize(w[:, j], scale, zero, 2**bits - 1)
        err = (w[:, j] - q[:, j]) / u[j, j]
        w[:, j:] -= torch.outer(err, u[j, j:])
    return q


@pytest.mark.parametrize("group_size,block_size", [(-1, 128), (-1, 32), (32, 32), (64, 16)])
def test_lazy_batches_equal_the_unbatched_algorithm(group_size, block_size):
    # With groups starting on block boundaries the lazy-batch form is exact algebra, not an approximation.
    w, h = correlated_problem(0, out=16, n_in=128)
    ref = unbatched_gptq(w, h, bits=3, group_size=group_size)
    got = gptq_quantize(w.double(), h.double(), bits=3, group_size=group_size, block_size=block_size)
    torch.testing.assert_close(got, ref, atol=1e-9, rtol=0)


@pytest.mark.parametrize("group_size", [-1, 64])
@pytest.mark.parametrize("sym", [False, True])
def test_identity_hessian_is_rtn(group_size, sym):
    w = torch.randn(32, 256)
    torch.testing.assert_close(gptq_quantize(w, torch.eye(256), bits=4, group_size=group_size, sym=sym),
                               rtn_quantize(w, bits=4, group_size=group_size, sym=sym), atol=0, rtol=0)


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("group_size", [-1, 128])
def test_layer_error_below_rtn_on_correlated_inputs(bits, group_size):
    w, h = correlated_problem(bits)
    e_gptq = layer_error(w, gptq_quantize(w, h, bits=bits, group_size=group_size), h)
    e_rtn = layer_error(w, rtn_quantize(w, bits=bits, group_size=group_size), h)
    assert e_gptq < 0.8 * e_rtn


def test_act_order_helps_on_a_skewed_diagonal():
    gains = []
    for seed in range(3):
        w, h = correlated_problem(10 + seed, skew=True)
        plain = layer_error(w, gptq_quantize(w, h, bits=3), h)
        ordered = layer_error(w, gptq_quantize(w, h, bits=3, act_order=True), h)
        gains.append(ordered / plain)
    assert max(gains) < 1.0, gains


def test_dead_input_gets_zero_weight():
    w, h = correlated_problem(3, out=8, n_in=64)
    h[5, :] = 0
    h[:, 5] = 0
    q = gptq_quantize(w, h, bits=4)
    assert q[:, 5].abs().max().item() == 0.0
    assert q[:, 4].abs().min().item() >= 0 and torch.isfinite(q).all()


def test_groups_in_the_first_block_use_the_original_weights():
    # The official code fits a group's grid from W, which only changes at block boundaries: every
    # group inside the first block therefore gets the grid of the untouched weights.
    w, h = correlated_problem(4, out=8, n_in=128)
    res = gptq(w, h, bits=3, group_size=32, block_size=128)
    for g in range(4):
        scale, zero = minmax_params(w[:, 32 * g : 32 * (g + 1)], bits=3, sym=False)
        torch.testing.assert_close(res.scale[:, g], scale)
        torch.testing.assert_close(res.zero[:, g], zero)
    # With blocks of 32 the later groups see the propagated error, so their grids move.
    moved = gptq(w, h, bits=3, group_size=32, block_size=32)
    assert not torch.allclose(moved.scale[:, 3], res.scale[:, 3])


@pytest.mark.parametrize("act_order,static_groups", [(False, False), (True, False), (True, True)])
def test_outputs_lie_on_the_reported_grids(act_order, static_groups):
    w, h = correlated_problem(5, out=16, n_in=128, skew=True)
    bits = 3
    res = gptq(w, h, bits=bits, group_size=32, act_order=act_order, static_groups=static_groups)
    scale, zero = res.scale[:, res.g_idx], res.zero[:, res.g_idx]  # (out, in)
    codes = res.weight / scale + zero
    torch.testing.assert_close(codes, codes.round(), atol=1e-3, rtol=0)
    assert codes.round().min() >= 0 and codes.round().max() <= 2**bits - 1
    for g in res.g_idx.unique():
        assert res.g_idx.eq(g).sum() == 32  # groups hold 32 columns, consecutive in the quantization order
        assert max(len(r.unique()) for r in res.weight[:, res.g_idx == g]) <= 2**bits
    if static_groups:  # static grids come from the weights before any update, by original column
        torch.testing.assert_close(res.g_idx, torch.arange(128) // 32)
        torch.testing.assert_close(res.scale[:, 1], minmax_params(w[:, 32:64], bits=bits, sym=False)[0])


def test_shape_and_dtype_are_preserved():
    w, h = correlated_problem(6, out=8, n_in=64)
    q = gptq_quantize(w.to(torch.bfloat16), h, bits=4, group_size=32)
    assert q.dtype == torch.bfloat16 and q.shape == (8, 64)


@pytest.mark.slow
def test_gptq_beats_rtn_perplexity_on_the_causal_lm():
    from reference_impls.common.runner import run_method

    for bits in (3, 4):
        opts = {"bits": bits, "group_size": 128}
        g = run_method("gptq", model="causal", calib_samples=32, eval_windows=48, options=opts)
        r = run_method("rtn", model="causal", eval_windows=48, options=opts)
        assert g["metrics"]["perplexity"] < r["metrics"]["perplexity"], (bits, g["metrics"], r["metrics"])
        assert g["bits_per_weight"] == r["bits_per_weight"]
