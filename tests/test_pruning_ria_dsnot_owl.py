"""RIA, DSnoT and OWL cores: hand-computed scores, exact patterns, and the property each adds."""

from __future__ import annotations

import pytest
import torch

from reference_impls.common.pruning import row_mask
from reference_impls.pruning.dsnot import dsnot_refine, reconstruction_error
from reference_impls.pruning.owl import outlier_ratio, owl_sparsities
from reference_impls.pruning.ria import heuristic_permutation, retained_score, ria_mask, ria_prune, ria_score


def test_ria_score_hand_computed():
    W = torch.tensor([[1.0, -3.0], [2.0, 4.0]])
    norms = torch.tensor([4.0, 9.0])
    # column sums 3, 7; row sums 4, 6; sqrt norms 2, 3
    expected = torch.tensor(
        [[(1 / 3 + 1 / 4) * 2, (3 / 7 + 3 / 4) * 3], [(2 / 3 + 2 / 6) * 2, (4 / 7 + 4 / 6) * 3]]
    )
    assert torch.allclose(ria_score(W, norms), expected)


def test_ria_unstructured_is_one_threshold_over_the_matrix():
    W = torch.randn(32, 64, generator=torch.Generator().manual_seed(0))
    norms = torch.rand(64) + 0.5
    P = ria_prune(W, norms, sparsity=0.5)
    zero = P == 0
    score = ria_score(W, norms)
    assert int(zero.sum()) == W.numel() // 2
    assert score[~zero].min() >= score[zero].max()


def test_ria_permutation_is_nm_in_permuted_order_and_keeps_more_score():
    g = torch.Generator().manual_seed(1)
    W = torch.randn(64, 128, generator=g)
    norms = torch.ones(128)
    norms[:32] = 100.0  # strong inputs clustered into the same groups of 4: identity grouping is bad
    pruned, perm = ria_mask(W, norms, prune_n=2, prune_m=4, lsa_block=16)
    assert sorted(perm.tolist()) == list(range(128))
    assert torch.all(pruned[:, perm].reshape(64, -1, 4).sum(-1) == 2)
    score = ria_score(W, norms)
    identity = retained_score(score, 2, 4)
    heuristic = retained_score(score[:, heuristic_permutation(score, 4)], 2, 4)
    final = float(score.masked_fill(pruned, 0).sum())
    assert identity < heuristic <= final + 1e-4
    assert final > 1.2 * identity


def _stats(seed: int, n: int = 4096, dim: int = 64):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, dim, generator=g) * (torch.rand(dim, generator=g) + 0.2) + torch.randn(
        dim, generator=g
    )
    return X, X.mean(0), X.var(0, unbiased=False), X.norm(dim=0)


def test_dsnot_keeps_row_sparsity_and_reduces_mean_error():
    X, mean, var, norm = _stats(2)
    W = torch.randn(32, 64, generator=torch.Generator().manual_seed(3))
    start = row_mask(W.abs() * norm, 0.6)
    refined = dsnot_refine(W, start, mean, var, norm, update_threshold=1e-3)
    assert torch.all(refined.sum(1) == start.sum(1))
    assert not torch.equal(refined, start)
    before = reconstruction_error(W, start, mean)
    after = reconstruction_error(W, refined, mean)
    assert after.mean() < 0.5 * before.mean()
    # the refined mask also reconstructs the real layer output better on these tokens
    out = X @ W.T
    err = lambda m: float(((out - X @ W.masked_fill(m, 0).T) ** 2).mean())  # noqa: E731
    assert err(refined) < err(start)


def test_dsnot_nm_keeps_pattern_and_error_sign():
    _, mean, var, norm = _stats(4)
    W = torch.randn(32, 64, generator=torch.Generator().manual_seed(5))
    from reference_impls.common.pruning import nm_mask

    score = W.abs() * norm
    start = nm_mask(score, 2, 4)
    refined = dsnot_refine(
        W, start, mean, var, norm, initial_score=score, prune_n=2, prune_m=4, update_threshold=0
    )
    assert torch.all(refined.reshape(32, -1, 4).sum(-1) == 2)
    eps0 = ((W * mean) * start).sum(1)
    eps1 = ((W * mean) * refined).sum(1)
    assert torch.all((torch.sign(eps1) == torch.sign(eps0)) | (eps1 == 0))
    assert torch.all(eps1.abs() <= eps0.abs() + 1e-5) and eps1.abs().sum() < eps0.abs().sum()


def test_owl_ratio_definition_and_allocation():
    # 1 of 10 scores is above 5x the mean (mean 1.9: 10 > 9.5), none of the others
    assert outlier_ratio([torch.tensor([1.0] * 9 + [10.0])], m=5) == pytest.approx(0.1)
    assert outlier_ratio([torch.ones(10)], m=5) == 0.0
    sp = owl_sparsities([0.01, 0.05, 0.03, 0.02], 0.7, lam=0.08)
    assert abs(sum(sp) / 4 - 0.7) < 1e-9
    assert max(sp) - min(sp) == pytest.approx(0.16)
    assert sp[1] == min(sp) and sp[0] == max(sp)  # most outliers -> least pruned
    assert owl_sparsities([0.02, 0.02], 0.5) == [0.5, 0.5]


def test_ria_lsa_step_matches_brute_force_over_all_assignments():
    import itertools

    from reference_impls.pruning.ria import _lsa_position

    g = torch.Generator().manual_seed(7)
    score = torch.rand(6, 16, generator=g) ** 3  # 4 groups of 4
    for position in range(4):
        best = 0.0
        for donors in itertools.permutations(range(4)):
            local = torch.arange(16)
            local[torch.arange(4) * 4 + position] = torch.tensor(donors) * 4 + position
            best = max(best, retained_score(score[:, local], 2, 4))
        chosen = retained_score(score[:, _lsa_position(score, 2, 4, position)], 2, 4)
        assert chosen == pytest.approx(best, rel=1e-6)
