"""Fast Walsh-Hadamard transform: scipy's matrix, orthogonality, Paley orders, the fast path."""

import pytest
import scipy.linalg
import torch

from reference_impls.common.hadamard import (
    RandomHadamard,
    fwht,
    hadamard_matrix,
    hadamard_transform,
    paley_matrix,
    split_order,
)


@pytest.mark.parametrize("n", [1, 2, 4, 8, 64, 256])
def test_power_of_two_matches_scipy(n):
    H = torch.from_numpy(scipy.linalg.hadamard(n)).double()
    assert torch.equal(hadamard_matrix(n), H)
    x = torch.randn(3, 5, n, dtype=torch.float64)
    assert torch.allclose(fwht(x), x @ H)


@pytest.mark.parametrize("m", [12, 20, 24, 44])
def test_paley_is_hadamard(m):
    H = paley_matrix(m)
    assert set(H.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(H @ H.t(), m * torch.eye(m, dtype=torch.float64))


@pytest.mark.parametrize("n", [64, 160, 384, 768])
def test_transform_is_orthonormal_product(n):
    H = hadamard_matrix(n)
    assert torch.allclose(H @ H.t(), n * torch.eye(n, dtype=torch.float64))
    x = torch.randn(7, n, dtype=torch.float64)
    assert torch.allclose(hadamard_transform(x), x @ H / n**0.5)
    assert torch.allclose(hadamard_transform(x, transpose=True), x @ H.t() / n**0.5)
    assert torch.allclose(hadamard_transform(hadamard_transform(x), transpose=True), x)
    assert torch.allclose(hadamard_transform(x).norm(dim=-1), x.norm(dim=-1))


def test_split_order_and_bad_sizes():
    assert split_order(768) == (12, 64)
    assert split_order(5120) == (20, 256)
    assert split_order(11008) == (5504, 2)  # 172 is not a Paley order
    assert split_order(256) == (1, 256)
    with pytest.raises(ValueError, match="no Hadamard"):
        split_order(36)
    with pytest.raises(ValueError, match="power-of-two"):
        fwht(torch.zeros(6))


def test_random_hadamard_orthogonal_and_inverse():
    R = RandomHadamard.draw(160, seed=3)
    Q = R.matrix()
    assert torch.allclose(Q @ Q.t(), torch.eye(160, dtype=torch.float64))
    x = torch.randn(4, 160, dtype=torch.float64)
    assert torch.allclose(R.apply(x), x @ Q)
    assert torch.allclose(R.apply_transposed(R.apply(x)), x)
    assert not torch.equal(RandomHadamard.draw(160, seed=4).signs, R.signs)


def test_rotation_spreads_an_outlier():
    x = torch.zeros(256, dtype=torch.float64)
    x[17] = 100.0  # one outlier channel becomes 256 equal-magnitude entries
    y = hadamard_transform(x)
    assert torch.allclose(y.abs(), torch.full_like(y, 100.0 / 16))
