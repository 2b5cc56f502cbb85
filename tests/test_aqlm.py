"""AQLM: reconstruction from the stored parts, the beam search against exhaustive search and nearest
rounding, the alternation against its k-means start, RTN/GPTQ on one layer, storage by hand."""

import itertools
import re

import pytest
import torch
from lowbit_fixtures import tiny_ctx

from reference_impls.quantization.aqlm import (
    aqlm_bits,
    aqlm_quantize,
    beam_search,
    dequantize,
    kmeans,
    objective,
    resolve_codebooks,
    run_aqlm,
)
from reference_impls.quantization.gptq import gptq_quantize
from reference_impls.quantization.rtn import rtn_quantize


def _layer(n_out=64, n_in=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(n_in, n_in, generator=g, dtype=torch.float64) / n_in**0.5
    X = torch.randn(2048, n_in, generator=g, dtype=torch.float64) @ (torch.eye(n_in) + 2 * mix)  # correlated
    return torch.randn(n_out, n_in, generator=g, dtype=torch.float64), 2 / X.shape[0] * X.T @ X


def _random_state(n_out, n_in, M, K, g, seed):
    gen = torch.Generator().manual_seed(seed)
    W = torch.randn(n_out, n_in, generator=gen, dtype=torch.float64)
    A = torch.randn(n_in, 3 * n_in, generator=gen, dtype=torch.float64)
    codebooks = torch.randn(M, K, g, generator=gen, dtype=torch.float64)
    codes = torch.randint(K, (n_out, n_in // g, M), generator=gen)
    scales = torch.rand(n_out, 1, generator=gen, dtype=torch.float64) + 0.5
    return W, A @ A.T, codes, codebooks, scales


def _row_errors(W, H, codes, codebooks, scales):
    E = W - dequantize(codes, codebooks, scales)
    return ((E @ H) * E).sum(1)


def test_dequantize_by_hand():
    codebooks = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[10.0, 20.0], [30.0, 40.0]]])  # M=2, K=2, g=2
    codes = torch.tensor([[[0, 1], [1, 0]]])  # one row, two groups
    scales = torch.tensor([[0.5]])
    # group 0: C_1[0] + C_2[1] = (31, 42); group 1: C_1[1] + C_2[0] = (13, 24); times 0.5
    assert dequantize(codes, codebooks, scales).tolist() == [[15.5, 21.0, 6.5, 12.0]]


def test_objective_is_the_output_error():
    gen = torch.Generator().manual_seed(0)
    W, Q, X = (torch.randn(*shape, generator=gen, dtype=torch.float64)
               for shape in ((5, 12), (5, 12), (40, 12)))
    direct = float((X @ W.T - X @ Q.T).pow(2).sum())  # ||WX − ŴX||² with X as (tokens, in)
    assert float(objective(W, Q, X.T @ X)) == pytest.approx(direct, rel=1e-12)


def test_kmeans_two_clear_clusters():
    pts = torch.tensor([[0.0, 0.0], [0.0, 1.0], [10.0, 10.0], [10.0, 11.0]])
    C, codes = kmeans(pts, 2, iters=10, generator=torch.Generator().manual_seed(0))
    assert sorted(C.tolist()) == [[0.0, 0.5], [10.0, 10.5]] and codes[0] == codes[1] != codes[2] == codes[3]


def test_reconstruction_from_stored_codes_is_exact():
    W, H = _layer(n_out=32, n_in=64)
    res = aqlm_quantize(W.float(), H.float(), num_codebooks=2, nbits_per_codebook=4, group_size=4, rounds=2,
                        max_steps=20, kmeans_iters=10)
    assert res.codebooks.dtype == torch.float16 and res.scales.dtype == torch.float16
    assert res.codes.shape == (32, 16, 2) and 0 <= int(res.codes.min()) and int(res.codes.max()) < 16
    C, s = res.codebooks.float(), res.scales.float()
    rebuilt = torch.empty(32, 64)
    for i, j in itertools.product(range(32), range(16)):  # a literal loop over rows and groups
        rebuilt[i, 4 * j:4 * j + 4] = (C[0, res.codes[i, j, 0]] + C[1, res.codes[i, j, 1]]) * s[i]
    assert torch.equal(rebuilt, res.weight)


@pytest.mark.parametrize("beam_size", [1, 3])
def test_beam_search_never_increases_the_objective(beam_size):
    for seed in range(3):
        W, H, codes, codebooks, scales = _random_state(6, 12, 2, 8, 3, seed)
        before = objective(W, dequantize(codes, codebooks, scales), H)
        new = beam_search(W, H, codes, codebooks, scales, beam_size=beam_size,
                          generator=torch.Generator().manual_seed(seed))
        after = objective(W, dequantize(new, codebooks, scales), H)
        assert after <= before * (1 + 1e-12) and after < before  # random codes are improvable
        assert (_row_errors(W, H, new, codebooks, scales)  # rows are independent: per row too
                <= _row_errors(W, H, codes, codebooks, scales) * (1 + 1e-12)).all()


@pytest.mark.parametrize("M, K, n_in, g, beam", [(2, 4, 2, 2, 4), (2, 2, 4, 2, 8)])
def test_wide_beam_finds_the_exhaustive_optimum(M, K, n_in, g, beam):
    """With beam >= K^(steps − 1) every code combination is scored: the search is exhaustive."""
    W, H, codes, codebooks, scales = _random_state(5, n_in, M, K, g, seed=7)
    new = beam_search(W, H, codes, codebooks, scales, beam_size=beam,
                      generator=torch.Generator().manual_seed(1))
    J = n_in // g
    for i in range(5):
        def error(c, i=i):
            return float(objective(W[i:i + 1], dequantize(c.view(1, J, M), codebooks, scales[i:i + 1]), H))
        best = min(error(torch.tensor(c)) for c in itertools.product(range(K), repeat=J * M))
        found = error(new[i])
        assert found == pytest.approx(best, rel=1e-12)


def test_one_scalar_codebook_is_nearest_rounding_under_diagonal_h():
    gen = torch.Generator().manual_seed(3)
    W = torch.randn(16, 40, generator=gen, dtype=torch.float64)
    H = torch.diag(torch.rand(40, generator=gen, dtype=torch.float64) + 0.1)
    grid = torch.linspace(-1.5, 1.5, 8, dtype=torch.float64)  # a 3-bit grid as a 1-D codebook
    scales = torch.rand(16, 1, generator=gen, dtype=torch.float64) + 0.5
    codes = torch.randint(8, (16, 40, 1), generator=gen)
    new = beam_search(W, H, codes, grid.view(1, 8, 1), scales)
    nearest = (W.unsqueeze(-1) / scales.unsqueeze(-1) - grid).abs().argmin(-1)  # (16, 40)
    assert torch.equal(new[..., 0], nearest)


def test_alternating_rounds_improve_on_the_kmeans_start():
    W, H = _layer()
    opts = dict(num_codebooks=2, nbits_per_codebook=4, group_size=4, kmeans_iters=20)
    start = aqlm_quantize(W, H, rounds=0, **opts)
    res = aqlm_quantize(W, H, rounds=3, max_steps=50, **opts)
    err0, err = float(objective(W, start.weight, H)), float(objective(W, res.weight, H))
    assert res.history[0] == pytest.approx(err0, rel=1e-3)  # same seed: the same k-means start
    assert err == pytest.approx(res.history[-1], rel=1e-6)
    assert err < 0.8 * err0
    assert all(b <= a * (1 + 1e-9) for a, b in zip(res.history, res.history[1:], strict=False))


def test_two_bits_beat_rtn_and_gptq_on_a_layer():
    """2x4 codebooks over groups of 4 = 2 code bits (2.19 bits/weight with codebooks and scales here)."""
    W, H = _layer()
    aq = aqlm_quantize(W, H, num_codebooks=2, nbits_per_codebook=4, group_size=4, rounds=3, max_steps=50,
                       kmeans_iters=20).weight
    err = {name: float(objective(W, Q, H)) for name, Q in (
        ("aqlm", aq), ("rtn", rtn_quantize(W, bits=2, group_size=128)),  # 2.25 bits/weight
        ("gptq", gptq_quantize(W, H, bits=2, group_size=128)))}
    assert err["aqlm"] < err["gptq"] < err["rtn"], err
    assert aqlm_bits(64, 256, num_codebooks=2, nbits_per_codebook=4, group_size=4) / W.numel() < 2.25


def test_bits_per_weight_by_hand():
    # down_proj of the project's model, 2x8 over groups of 8: codes 256·96 groups · 16 bits,
    # codebooks 2 · 256 · 8 values · 16 bits, one 16-bit scale per row
    assert aqlm_bits(256, 768, num_codebooks=2, nbits_per_codebook=8, group_size=8) == \
        256 * 96 * 16 + 2 * 256 * 8 * 16 + 256 * 16  # = 2.6875 bits/weight on this small matrix
    ctx = tiny_ctx()
    out = run_aqlm(ctx, bits=2, num_codebooks=0, nbits_per_codebook=4, group_size=4, beam_size=1, rounds=1,
                   max_steps=2, lr=1e-4, kmeans_iters=2, tolerance=0.01)
    # tiny Llama, per block: q, o (64x64), k, v (32x64), gate, up (160x64), down (64x160) — 2 blocks
    shapes = [(64, 64), (32, 64), (32, 64), (64, 64), (160, 64), (160, 64), (64, 160)] * 2
    bits = sum(o * i // 4 * 2 * 4 + 2 * 16 * 4 * 16 + o * 16 for o, i in shapes)
    assert ctx.ledger.bits == bits and ctx.ledger.n_weights == sum(o * i for o, i in shapes)
    assert out["num_codebooks"] == 2 and out["code_bits"] == 2.0 and 0 < out["error_vs_init"] <= 1


def test_block_finetuning_lowers_the_block_loss():
    ctx = tiny_ctx()
    out = run_aqlm(ctx, bits=2, num_codebooks=0, nbits_per_codebook=4, group_size=4, beam_size=1, rounds=1,
                   max_steps=5, lr=1e-4, kmeans_iters=3, tolerance=0.01, finetune_steps=20, finetune_lr=1e-3)
    assert all(b < a for a, b in zip(out["block_loss_init"], out["block_loss_trained"], strict=True)), out
    layer = ctx.model.model.layers[0]
    assert type(layer.mlp.down_proj) is torch.nn.Linear and layer.input_layernorm.weight.requires_grad
    assert not torch.equal(layer.input_layernorm.weight, torch.ones(64))  # the norms were trained too


def test_option_combinations():
    assert resolve_codebooks(bits=2, num_codebooks=0, nbits_per_codebook=8, group_size=8) == 2  # 2x8
    assert resolve_codebooks(bits=3, num_codebooks=0, nbits_per_codebook=6, group_size=4) == 2  # 2x6
    assert resolve_codebooks(bits=0, num_codebooks=1, nbits_per_codebook=16, group_size=8) == 1  # 1x16
    for (bits, M, B, g), flag in (((3, 0, 8, 6), "--bits 3"), ((3, 2, 8, 8), "disagrees"),
                                  ((2, 0, 17, 8), "--nbits-per-codebook"), ((0, 0, 8, 8), "--bits"),
                                  ((2, 0, 8, 0), "--group-size")):
        with pytest.raises(ValueError, match=re.escape(flag)) as info:
            resolve_codebooks(bits=bits, num_codebooks=M, nbits_per_codebook=B, group_size=g)
        assert "\n" not in str(info.value)
    rest = dict(num_codebooks=0, rounds=1, max_steps=1, lr=1e-4, kmeans_iters=1, tolerance=0.01)
    with pytest.raises(ValueError, match="--group-size 6 must divide"):
        run_aqlm(tiny_ctx(), bits=3, nbits_per_codebook=9, group_size=6, beam_size=1, **rest)
    with pytest.raises(ValueError, match="--beam-size"):
        run_aqlm(tiny_ctx(), bits=2, nbits_per_codebook=8, group_size=8, beam_size=0, **rest)


def test_bad_option_combination_fails_before_the_model_is_loaded(monkeypatch):
    from reference_impls.common import runner

    def no_load(*_args, **_kwargs):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(runner, "load_model", no_load)
    with pytest.raises(ValueError, match=re.escape("--bits 3: bits x group size (24) must be a multiple")):
        runner.run_method("aqlm", model="causal", options={"bits": 3, "nbits_per_codebook": 5})
    with pytest.raises(ValueError, match="--finetune-steps must be >= 0"):
        runner.run_method("aqlm", model="causal", options={"bits": 2, "finetune_steps": -1})


@pytest.mark.slow
def test_two_bits_beat_rtn_perplexity_on_the_causal_lm():
    """2x4 codebooks over groups of 4 (2.07 bits/weight), a short schedule, against RTN 2-bit g128 (2.14)."""
    from reference_impls.common.runner import run_method

    short = {"bits": 2, "nbits_per_codebook": 4, "group_size": 4, "rounds": 1, "max_steps": 10,
             "kmeans_iters": 5}
    a = run_method("aqlm", model="causal", calib_samples=16, eval_windows=16, options=short)
    r = run_method("rtn", model="causal", eval_windows=16, options={"bits": 2, "group_size": 128})
    assert a["bits_per_weight"] < r["bits_per_weight"]
    assert a["metrics"]["perplexity"] < r["metrics"]["perplexity"], (a["metrics"], r["metrics"])
