"""Selective Context: hand-computed percentile filters and the ratio it promises."""

import numpy as np
import pytest
import torch

from reference_impls.prompt.selective_context import lexical_units, selective_keep


def test_token_units_hand_computed():
    # sorted [0.5, 1, 2, 3, 5]; the 40th percentile interpolates at index 1.6: 1 + 0.6·(2 − 1) = 1.6;
    # the official filter drops info < 1.6, so tokens 0 (3.0), 2 (2.0), 3 (5.0) stay
    info = torch.tensor([3.0, 1.0, 2.0, 5.0, 0.5])
    units = lexical_units(["a"] * 5, unit="token")
    assert selective_keep(info, units, ratio=0.6).tolist() == [0, 2, 3]


def test_word_units_mean_and_sum_hand_computed():
    pieces = ["def", " f", "(x", "):", "\n"]
    units = lexical_units(pieces, unit="word")
    assert units == [(0, 1), (1, 4), (4, 5)]  # "def", " f(x):", "\n"
    info = torch.tensor([3.0, 1.0, 2.0, 5.0, 0.5])
    # mean: 3, 8/3, 0.5; 66.7th percentile = 8/3 + (1/3)(3 − 8/3) ≈ 2.78 → only "def" stays
    assert selective_keep(info, units, ratio=1 / 3).tolist() == [0]
    # sum (the paper's additive information): 3, 8, 0.5; percentile = 3 + (1/3)·5 ≈ 4.67 → " f(x):" stays
    assert selective_keep(info, units, ratio=1 / 3, aggregate="sum").tolist() == [1, 2, 3]


def test_line_units():
    pieces = ["x", " =", " 1", "\n", "y", "\n\n", "z"]
    assert lexical_units(pieces, unit="line") == [(0, 4), (4, 6), (6, 7)]


@pytest.mark.parametrize("ratio", [0.25, 0.33, 0.5, 0.8])
def test_kept_units_match_the_ratio_within_one(ratio):
    rng = np.random.default_rng(0)
    info = torch.tensor(rng.exponential(size=101))
    keep = selective_keep(info, lexical_units(["a"] * 101, unit="token"), ratio=ratio)
    assert abs(keep.numel() - ratio * 101) <= 1
    # and they are the most informative ones
    assert info[keep].min() >= info[torch.tensor(sorted(set(range(101)) - set(keep.tolist())))].max()
