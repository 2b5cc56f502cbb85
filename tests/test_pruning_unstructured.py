"""Oracles and invariants for the unstructured and N:M pruners (magnitude, Wanda, SparseGPT)."""

from __future__ import annotations

import pytest
import torch

from reference_impls.common.pruning import row_mask
from reference_impls.pruning.magnitude import magnitude_prune, model_magnitude_masks
from reference_impls.pruning.sparsegpt import sparsegpt_prune
from reference_impls.pruning.wanda import wanda_prune


def correlated_inputs(n: int, dim: int, seed: int = 0) -> torch.Tensor:
    """Tokens whose input features are strongly correlated and of uneven scale, as in LLM layers."""
    g = torch.Generator().manual_seed(seed)
    latent = torch.randn(n, dim // 4, generator=g)
    mix = torch.randn(dim // 4, dim, generator=g)
    scale = torch.logspace(-1, 1, dim)[torch.randperm(dim, generator=g)]
    return (latent @ mix + 0.1 * torch.randn(n, dim, generator=g)) * scale  # (n, in)


def hessian_of(X: torch.Tensor) -> torch.Tensor:
    return 2.0 / X.shape[0] * X.T @ X  # (in, in)


def output_error(X, W, W_hat) -> float:
    return float(((X @ W.T - X @ W_hat.T) ** 2).sum())


def test_magnitude_exact_global_sparsity():
    W = torch.randn(64, 128, generator=torch.Generator().manual_seed(1))
    P = magnitude_prune(W, sparsity=0.5)
    zero = P == 0
    assert int(zero.sum()) == W.numel() // 2
    # one threshold over the whole matrix: every kept magnitude >= every pruned one
    assert W[~zero].abs().min() >= W[zero].abs().max()
    assert torch.equal(P[~zero], W[~zero])
    assert torch.equal(magnitude_prune(W, sparsity=0.0), W)


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 4)])
def test_nm_exact_per_group(n, m):
    W = torch.randn(16, 64, generator=torch.Generator().manual_seed(2))
    norms = torch.rand(64) + 0.1
    for P in (magnitude_prune(W, prune_n=n, prune_m=m), wanda_prune(W, norms, prune_n=n, prune_m=m)):
        zeros_per_group = (P == 0).reshape(16, 64 // m, m).sum(-1)
        assert torch.all(zeros_per_group == n)
    # magnitude keeps the largest M-N of each group
    groups = W.abs().reshape(16, -1, m)
    kept = magnitude_prune(W, prune_n=n, prune_m=m).abs().reshape(16, -1, m)
    assert torch.allclose(kept.sort(-1).values[..., n:], groups.sort(-1).values[..., n:])


def test_wanda_hand_computed_case():
    W = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    norms = torch.tensor([100.0, 10.0, 1.0, 0.1])  # scores 100, 20, 3, 0.4
    assert torch.equal(wanda_prune(W, norms, sparsity=0.5), torch.tensor([[1.0, 2.0, 0.0, 0.0]]))
    # magnitude alone would have kept the last two
    assert torch.equal(magnitude_prune(W, sparsity=0.5), torch.tensor([[0.0, 0.0, 3.0, 4.0]]))


def test_wanda_exact_per_row_sparsity():
    W = torch.randn(32, 100, generator=torch.Generator().manual_seed(3))
    P = wanda_prune(W, torch.rand(100), sparsity=0.3)
    assert torch.all((P == 0).sum(1) == 30)


def test_wanda_with_uniform_norms_is_magnitude():
    W = torch.randn(32, 64, generator=torch.Generator().manual_seed(4))
    ones = torch.full((64,), 3.0)
    assert torch.equal(wanda_prune(W, ones, prune_n=2, prune_m=4), magnitude_prune(W, prune_n=2, prune_m=4))
    # unstructured Wanda compares within rows: it equals magnitude with a per-row threshold
    assert torch.equal(wanda_prune(W, ones, sparsity=0.5), W.masked_fill(row_mask(W.abs(), 0.5), 0))


def test_sparsegpt_zero_sparsity_leaves_weight_unchanged():
    X = correlated_inputs(512, 64)
    W = torch.randn(16, 64, generator=torch.Generator().manual_seed(5))
    assert torch.equal(sparsegpt_prune(W, hessian_of(X), sparsity=0.0), W)


@pytest.mark.parametrize("nm", [(0, 0), (2, 4)])
def test_sparsegpt_beats_magnitude_and_wanda_on_correlated_inputs(nm):
    n, m = nm
    X = correlated_inputs(2048, 128)
    W = torch.randn(64, 128, generator=torch.Generator().manual_seed(6))
    norms = X.norm(dim=0)
    S = sparsegpt_prune(W, hessian_of(X), sparsity=0.5, prune_n=n, prune_m=m, block_size=32)
    if n:
        assert torch.all((S == 0).reshape(64, -1, m).sum(-1) == n)
    else:
        assert int((S == 0).sum()) == W.numel() // 2
    err_sgpt = output_error(X, W, S)
    err_mag = output_error(X, W, magnitude_prune(W, sparsity=0.5, prune_n=n, prune_m=m))
    err_wanda = output_error(X, W, wanda_prune(W, norms, sparsity=0.5, prune_n=n, prune_m=m))
    assert err_sgpt < 0.7 * err_wanda < 0.7 * err_mag


def literal_sparsegpt(W, H, sparsity, block_size, damp):
    """The paper's OBS update column by column with explicit inverses of H restricted to the
    not-yet-processed columns F = {j, ..., in-1}: no Cholesky factor, no lazy batching, float64."""
    W = W.double().clone()
    H = H.double().clone()
    cols = W.shape[1]
    H += damp * torch.mean(torch.diag(H)) * torch.eye(cols, dtype=H.dtype)
    inv_F = [torch.linalg.inv(H[j:, j:]) for j in range(cols)]  # inv_F[j]: (in-j, in-j)
    for b in range(0, cols, block_size):
        d = torch.tensor([inv_F[j][0, 0] for j in range(b, b + block_size)], dtype=W.dtype)
        score = W[:, b : b + block_size] ** 2 / d  # w² / [H_F⁻¹]_jj
        k = int(score.numel() * sparsity)
        pruned = torch.zeros(score.numel(), dtype=torch.bool)
        pruned[torch.topk(score.flatten(), k, largest=False).indices] = True
        pruned = pruned.view_as(score)
        for j in range(b, b + block_size):
            err = W[:, j].clone() * pruned[:, j - b]  # (out,): the value removed from column j
            W[:, j:] -= err.unsqueeze(1) * (inv_F[j][0, :] / inv_F[j][0, 0]).unsqueeze(0)
    return W


def test_sparsegpt_matches_literal_obs_transcription():
    X = correlated_inputs(256, 32, seed=7)
    W = torch.randn(8, 32, generator=torch.Generator().manual_seed(8))
    H = hessian_of(X)
    ours = sparsegpt_prune(W, H, sparsity=0.5, block_size=8, damp=0.01)
    ref = literal_sparsegpt(W, H, 0.5, 8, 0.01)
    assert torch.equal(ours == 0, ref.abs() < 1e-9)
    assert torch.allclose(ours.double(), ref, atol=1e-4, rtol=1e-4)


def test_sparsegpt_dead_inputs_are_zeroed():
    X = correlated_inputs(256, 32, seed=9)
    X[:, 5] = 0
    W = torch.randn(8, 32, generator=torch.Generator().manual_seed(10))
    S = sparsegpt_prune(W, hessian_of(X), sparsity=0.25, block_size=16)
    assert torch.all(S[:, 5] == 0)
    assert S.dtype == W.dtype and S.shape == W.shape


def test_sparsegpt_joint_quantization_lands_on_the_grid_and_beats_prune_then_round():
    from reference_impls.quantization.rtn import rtn_quantize

    X = correlated_inputs(2048, 128, seed=11)
    W = torch.randn(32, 128, generator=torch.Generator().manual_seed(12))
    H = hessian_of(X)
    J = sparsegpt_prune(W, H, sparsity=0.5, block_size=32, bits=4, group_size=32)
    assert int((J == 0).sum()) >= W.numel() // 2
    for g in range(4):  # at most 2^4 distinct values per row and group of 32 columns (zero included)
        block = J[:, 32 * g : 32 * (g + 1)]
        assert max(len(torch.unique(row)) for row in block) <= 16
    # pruning with SparseGPT and then rounding the survivors compensates nothing for the rounding
    naive = rtn_quantize(sparsegpt_prune(W, H, sparsity=0.5, block_size=32), bits=4, group_size=32)
    naive = naive.masked_fill(sparsegpt_prune(W, H, sparsity=0.5, block_size=32) == 0, 0)
    assert output_error(X, W, J) < output_error(X, W, naive)


def test_model_scope_magnitude_uses_one_threshold_over_all_matrices():
    # Hand case: 6 weights, 50% -> the three smallest magnitudes (1, -2, 3) go, wherever they sit.
    weights = {"a": torch.tensor([[1.0, -2.0], [3.0, 40.0]]), "b": torch.tensor([[10.0, -20.0]])}
    masks = model_magnitude_masks(weights, 0.5)
    assert masks["a"].tolist() == [[True, True], [True, False]]
    assert masks["b"].tolist() == [[False, False]]
    # Random matrices of different scales: exact total count, uneven per-matrix sparsity.
    g = torch.Generator().manual_seed(0)
    weights = {"small": torch.randn(16, 32, generator=g) * 0.01, "big": torch.randn(32, 16, generator=g)}
    masks = model_magnitude_masks(weights, 0.5)
    assert sum(int(m.sum()) for m in masks.values()) == 512
    assert masks["small"].float().mean() > 0.95 and masks["big"].float().mean() < 0.05
    kept = torch.cat([w[~masks[n]].abs() for n, w in weights.items()])
    dropped = torch.cat([w[masks[n]].abs() for n, w in weights.items()])
    assert dropped.max() <= kept.min()
