"""Oracles for the SVD-family cores (DESIGN §6): plain SVD, SVD-LLM, ASVD, FWSVD, and ASVD's allocation."""

from __future__ import annotations

import pytest
import torch

from reference_impls.common.storage import rank_for_ratio
from reference_impls.low_rank.asvd import allocate_ratios, asvd_compress
from reference_impls.low_rank.fwsvd import fwsvd_compress
from reference_impls.low_rank.svd import svd_compress
from reference_impls.low_rank.svd_llm import svd_llm_compress, whitening_factor


def correlated_inputs(n: int, dim: int, seed: int = 0) -> torch.Tensor:
    """Tokens (n, in) with strongly correlated features of uneven scale, as in LLM layers."""
    g = torch.Generator().manual_seed(seed)
    latent = torch.randn(n, dim // 4, generator=g)
    mix = torch.randn(dim // 4, dim, generator=g)
    scale = torch.logspace(-1, 1, dim)[torch.randperm(dim, generator=g)]
    return (latent @ mix + 0.1 * torch.randn(n, dim, generator=g)) * scale


def out_err(X, W, W2) -> float:
    return float(((X.double() @ (W.double() - W2.double()).T) ** 2).sum())


def test_full_rank_is_exact_and_rank_is_respected():
    W = torch.randn(24, 40, generator=torch.Generator().manual_seed(0))
    X = correlated_inputs(400, 40)
    for W2 in (svd_compress(W, rank=24), svd_llm_compress(W, X.T @ X, rank=24),
               asvd_compress(W, X.abs().mean(0), rank=24), fwsvd_compress(W, torch.rand(24, 40), rank=24)):
        assert W2.dtype == W.dtype and W2.shape == W.shape
        torch.testing.assert_close(W2, W, atol=1e-4, rtol=1e-4)
    for W2 in (svd_compress(W, rank=5), svd_llm_compress(W, X.T @ X, rank=5),
               asvd_compress(W, X.abs().mean(0), rank=5), fwsvd_compress(W, torch.rand(24, 40), rank=5)):
        assert torch.linalg.matrix_rank(W2.double(), rtol=1e-5) == 5  # float32 output: rounding noise


def test_svd_is_eckart_young():
    # rank-1 hand case: diag(3, 1) -> keeps the 3
    W = torch.tensor([[3.0, 0.0], [0.0, 1.0]])
    torch.testing.assert_close(svd_compress(W, rank=1), torch.tensor([[3.0, 0.0], [0.0, 0.0]]))
    W = torch.randn(30, 20, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    s = torch.linalg.svdvals(W)
    err = float(((W - svd_compress(W, rank=7)) ** 2).sum())
    assert err == pytest.approx(float((s[7:] ** 2).sum()), rel=1e-9)


def test_svd_llm_truncation_loss_is_sum_of_discarded_singular_values_squared():
    X = correlated_inputs(600, 48, seed=2).double()  # (n, in)
    W = torch.randn(32, 48, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    G = X.T @ X
    # oracle independent of the method's SVD: σ_i² of W·L are the eigenvalues of W G Wᵀ
    sigma2 = torch.linalg.eigvalsh(W @ G @ W.T).flip(0)
    for k in (1, 8, 20):
        loss = out_err(X, W, svd_llm_compress(W, G, rank=k))
        assert loss == pytest.approx(float(sigma2[k:].sum()), rel=1e-6)
    # the gram's scale does not matter (the 2/n-scaled Hessian may be passed)
    torch.testing.assert_close(svd_llm_compress(W, G, rank=8), svd_llm_compress(W, 2 / 600 * G, rank=8))


def test_svd_llm_beats_svd_and_asvd_on_correlated_activations():
    X = correlated_inputs(800, 64, seed=4)
    W = torch.randn(48, 64, generator=torch.Generator().manual_seed(5))
    for k in (4, 16, 32):
        e_llm = out_err(X, W, svd_llm_compress(W, X.T @ X, rank=k))
        e_svd = out_err(X, W, svd_compress(W, rank=k))
        e_asvd = out_err(X, W, asvd_compress(W, X.abs().mean(0), rank=k))
        assert e_llm < e_asvd < e_svd, (k, e_llm, e_asvd, e_svd)


def test_svd_llm_cholesky_fallback_on_singular_gram():
    X = correlated_inputs(10, 32, seed=6)  # 10 tokens: the 32x32 Gram has rank 10, Cholesky fails
    G = X.T @ X
    assert torch.linalg.cholesky_ex(G.double()).info.item() != 0
    L = whitening_factor(G)
    lam_min = torch.linalg.eigvalsh(G.double())[0]
    torch.testing.assert_close(L @ L.T, G.double() + (-lam_min + 1e-6) * torch.eye(32, dtype=torch.float64))
    W = torch.randn(8, 32, generator=torch.Generator().manual_seed(7))
    assert torch.isfinite(svd_llm_compress(W, G, rank=4)).all()


def test_asvd_is_the_official_scaling_and_beats_svd_on_activation_weighted_error():
    W = torch.randn(40, 64, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    act = torch.logspace(-2, 1, 64, dtype=torch.float64)[torch.randperm(64, generator=torch.Generator())]
    # literal transcription of ASVD4LLM SVDLinear.from_linear with exact SVD
    S = act**0.5 + 1e-6
    U, s, Vh = torch.linalg.svd(W * S, full_matrices=False)
    ref = (U[:, :10] * s[:10]) @ (Vh[:10] / S)
    torch.testing.assert_close(asvd_compress(W, act, rank=10), ref)
    # with α = 1 ASVD is the optimum of the column-weighted error ‖(W − W′)·diag(mean|x|)‖
    for k in (5, 10, 30):
        def weighted(W2):
            return float((((W - W2) * act) ** 2).sum())
        assert weighted(asvd_compress(W, act, rank=k, alpha=1.0)) < weighted(svd_compress(W, rank=k))
    # uniform activations: ASVD is plain SVD
    torch.testing.assert_close(asvd_compress(W, torch.full((64,), 4.0, dtype=torch.float64), rank=7),
                               svd_compress(W, rank=7))


def test_fwsvd_beats_svd_on_fisher_weighted_error():
    g = torch.Generator().manual_seed(9)
    W = torch.randn(36, 50, generator=g, dtype=torch.float64)
    spread = torch.logspace(-3, 2, 36, dtype=torch.float64)[:, None]  # rows of very different importance
    fisher = torch.rand(36, 50, generator=g, dtype=torch.float64) * spread
    I_row = fisher.sum(1, keepdim=True)

    def fisher_err(W2):  # the objective FWSVD minimises: row-shared importance
        return float((I_row * (W - W2) ** 2).sum())

    for k in (3, 12, 30):
        assert fisher_err(fwsvd_compress(W, fisher, rank=k)) < fisher_err(svd_compress(W, rank=k))
        # and it is that objective's optimum: Σ discarded σ² of Î^{1/2} W
        s = torch.linalg.svdvals(I_row.sqrt() * W)
        optimum = float((s[k:] ** 2).sum())
        assert fisher_err(fwsvd_compress(W, fisher, rank=k)) == pytest.approx(optimum, rel=1e-4)
    # equal row importance: FWSVD is plain SVD; per-row Fisher can be passed directly
    torch.testing.assert_close(fwsvd_compress(W, torch.ones(36, 50, dtype=torch.float64), rank=9),
                               svd_compress(W, rank=9))
    torch.testing.assert_close(fwsvd_compress(W, I_row[:, 0], rank=9), fwsvd_compress(W, fisher, rank=9))


def test_asvd_allocation_binary_search():
    # layer "a" is insensitive, "b" very sensitive: the budget goes to "b"
    scores = {"a": {0.4: 10.0, 0.5: 10.0, 0.6: 10.0}, "b": {0.4: 50.0, 0.5: 30.0, 0.6: 20.0}}
    numel = {"a": 100, "b": 100}
    assert allocate_ratios(scores, numel, 0.7) == {"a": 0.4, "b": 1.0}
    assert allocate_ratios(scores, numel, 0.5) == {"a": 0.4, "b": 0.6}
    assert allocate_ratios(scores, numel, 0.4) == {"a": 0.4, "b": 0.4}
    # always within the budget, and the least compressed layout that is
    for target in (0.42, 0.55, 0.8, 0.95):
        r = allocate_ratios(scores, numel, target)
        assert sum(numel[k] * v for k, v in r.items()) / 200 <= target
    with pytest.raises(ValueError, match="--ratio"):
        allocate_ratios(scores, numel, 0.3)
    assert rank_for_ratio(100, 100, 0.4) == 20
