"""The faster SparseGPT sweep (sub-block lazy batching, mask selection without sorting) against a plain
transcription of the official loop and against itself without the inner batching: same masks, same
weights up to float32 rounding."""

from __future__ import annotations

import pytest
import torch

from reference_impls.common.gptq_timing import calibration_hessian, layer_error
from reference_impls.common.pruning import global_mask
from reference_impls.common.sparsegpt_timing import straightforward_sparsegpt
from reference_impls.pruning import sparsegpt
from reference_impls.pruning.sparsegpt import sparsegpt_prune


@pytest.fixture(scope="module")
def layer():
    H = calibration_hessian(384, 4096, seed=3)[0]  # correlated, uneven channels
    W = torch.randn(256, 384, generator=torch.Generator().manual_seed(4)) * 0.02
    return W, H


@pytest.mark.parametrize("pattern", [{"sparsity": 0.5}, {"sparsity": 0.7}, {"prune_n": 2, "prune_m": 4}])
def test_agrees_with_the_official_loop_transcription(layer, pattern):
    W, H = layer
    n, m = pattern.get("prune_n", 0), pattern.get("prune_m", 0)
    ours = sparsegpt_prune(W, H, sparsity=pattern.get("sparsity", 0.5), prune_n=n, prune_m=m)
    ref = straightforward_sparsegpt(W, H, sparsity=pattern.get("sparsity", 0.5), prunen=n, prunem=m,
                                    official_count=False)  # exactly k per block, our convention
    assert torch.equal(ours == 0, ref == 0)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-6)
    assert layer_error(W, ours, H) == pytest.approx(layer_error(W, ref, H), rel=1e-5)


def test_official_threshold_prunes_one_more_per_block(layer):
    W, H = layer
    ref = straightforward_sparsegpt(W, H, sparsity=0.5)
    assert int((ref == 0).sum()) == W.numel() // 2 + 3  # 3 blocks of 128 columns, one extra each
    assert int((sparsegpt_prune(W, H, sparsity=0.5) == 0).sum()) == W.numel() // 2


@pytest.mark.parametrize("kwargs", [
    {"sparsity": 0.5},
    {"prune_n": 2, "prune_m": 4},
    {"prune_n": 2, "prune_m": 6, "block_size": 96},  # M does not divide 16: sub-blocks of 18 columns
    {"sparsity": 0.5, "bits": 4, "group_size": 32},
    {"prune_n": 2, "prune_m": 4, "bits": 3},
])
def test_inner_lazy_batching_changes_nothing_but_rounding(layer, kwargs, monkeypatch):
    W, H = layer
    fast = sparsegpt_prune(W, H, **kwargs)
    monkeypatch.setattr(sparsegpt, "SUB_BLOCK", 1)  # a rank-1 update per column: the unbatched sweep
    plain = sparsegpt_prune(W, H, **kwargs)
    if "bits" in kwargs:  # a rare value rounds to the other grid point (and its error moves on)
        assert ((fast == 0) != (plain == 0)).float().mean() < 1e-2
        assert (fast - plain).abs().gt(1e-5).float().mean() < 1e-2
    else:
        assert torch.equal(fast == 0, plain == 0)
        torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-6)
    rel = 1e-3 if "bits" in kwargs else 1e-5
    assert layer_error(W, fast, H) == pytest.approx(layer_error(W, plain, H), rel=rel)


def test_global_mask_selects_exactly_the_lowest_k():
    g = torch.Generator().manual_seed(0)
    score = torch.rand(64, 48, generator=g)
    for sparsity in (0.0, 0.1, 0.5, 0.9):
        mask = global_mask(score, sparsity)
        k = int(score.numel() * sparsity)
        want = torch.zeros(score.numel(), dtype=torch.bool)
        want[torch.sort(score.flatten()).indices[:k]] = True
        assert torch.equal(mask, want.view_as(score))
    ties = torch.tensor([[0.5, 0.0, 0.5], [0.5, 0.0, 1.0]])  # k = 3: both zeros, then the first 0.5
    assert global_mask(ties, 0.5).tolist() == [[True, True, False], [False, True, False]]
