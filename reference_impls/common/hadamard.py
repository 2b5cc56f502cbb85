"""Fast Walsh-Hadamard transforms: the orthogonal rotations of QuaRot, QuIP# and SpinQuant's R₃/R₄.

A Hadamard matrix H (n × n, entries ±1, H Hᵀ = n I) rotates a vector in O(n log n) when n = 2^k
(Sylvester's construction H_2n = [[H, H], [H, −H]], the ordering of `scipy.linalg.hadamard`). Model
widths are often m · 2^k with m not a power of two (768 = 12 · 64, 5120 = 20 · 256): as in QuaRot's
`hadamard_utils`, H_n = H_m ⊗ H_{2^k} with a small Paley matrix H_m (Paley's construction I, for
m − 1 a prime ≡ 3 mod 4: 12, 20, 24, 32, 44, 48, ...), applied as a fast transform over the 2^k part and
a dense m × m product over the rest. Orders Paley I cannot build (QuaRot hard-codes e.g. 172 for
11008 = 172 · 64) fall back to the next split that it can (11008 = 5504 · 2, a dense 5504 factor).

No maintained CPU package does this (`fast-hadamard-transform` is CUDA-only), so it is written here:
`hadamard_transform(x)` = x H / √n along the last dimension (orthonormal; `transpose=True` gives
x Hᵀ / √n, the inverse; Sylvester's H is symmetric, Paley's is not), `hadamard_matrix(n)` the ±1
matrix it uses, `RandomHadamard` QuaRot's randomised rotation diag(s) H / √n with random signs s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import torch


def _is_prime(q: int) -> bool:
    return q >= 2 and all(q % p for p in range(2, math.isqrt(q) + 1))


@cache
def paley_matrix(m: int) -> torch.Tensor:
    """Hadamard matrix of order m = q + 1, q prime ≡ 3 (mod 4) (Paley I), float64 ±1."""
    q = m - 1
    if not (_is_prime(q) and q % 4 == 3):
        raise ValueError(f"no Paley construction of order {m} (needs m - 1 prime and ≡ 3 mod 4)")
    squares = {(i * i) % q for i in range(1, q)}
    chi = torch.tensor([0.0] + [1.0 if a in squares else -1.0 for a in range(1, q)], dtype=torch.float64)
    idx = torch.arange(q)
    jacobsthal = chi[(idx[None, :] - idx[:, None]) % q]  # Q_ij = χ(j − i), skew-symmetric for q ≡ 3 mod 4
    S = torch.zeros(m, m, dtype=torch.float64)
    S[0, 1:], S[1:, 0], S[1:, 1:] = 1.0, -1.0, jacobsthal
    return S + torch.eye(m, dtype=torch.float64)  # skew Hadamard: H = I + S


def split_order(n: int) -> tuple[int, int]:
    """(m, 2^k) with n = m · 2^k, m = 1 or a Paley order, 2^k as large as possible."""
    if n < 1:
        raise ValueError(f"Hadamard size must be positive, got {n}")
    p = n & -n  # the largest power of two dividing n
    while p >= 1:
        m = n // p
        if m == 1 or (m % 4 == 0 and _is_prime(m - 1) and (m - 1) % 4 == 3):
            return m, p
        p //= 2
    raise ValueError(f"no Hadamard matrix of size {n} here: need n = m·2^k, m = 1 or m − 1 a prime ≡ 3 mod 4")


def fwht(x: torch.Tensor) -> torch.Tensor:
    """Unnormalised Walsh-Hadamard transform along the last dimension (size a power of two):
    x H with H Sylvester's matrix, by log2(n) butterflies (a + b, a − b)."""
    n = x.shape[-1]
    if n & (n - 1):
        raise ValueError(f"fwht needs a power-of-two size, got {n}")
    lead = x.shape[:-1]
    y = x.reshape(-1, n)
    h = 1
    while h < n:
        y = y.reshape(-1, n // (2 * h), 2, h)  # pairs (a, b) at distance h
        a, b = y[:, :, 0, :], y[:, :, 1, :]
        y = torch.stack((a + b, a - b), dim=2)
        h *= 2
    return y.reshape(*lead, n)


def hadamard_matrix(n: int, *, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The ±1 matrix H_m ⊗ H_{2^k} (Sylvester's H_n for powers of two, equal to scipy.linalg.hadamard)."""
    m, p = split_order(n)
    sylvester = fwht(torch.eye(p, dtype=torch.float64))
    return (sylvester if m == 1 else torch.kron(paley_matrix(m), sylvester)).to(dtype)


def hadamard_transform(x: torch.Tensor, *, transpose: bool = False) -> torch.Tensor:
    """x H / √n (x Hᵀ / √n with `transpose`) along the last dimension, H = H_m ⊗ H_{2^k}: orthonormal,
    O(n log n) over the power-of-two factor."""
    n = x.shape[-1]
    m, p = split_order(n)
    y = fwht(x.reshape(*x.shape[:-1], m, p))  # H_{2^k} (symmetric) on the inner index, (..., m, p)
    if m > 1:  # the dense small factor on the outer index: y[a] = Σ_b x[b] H_m[b, a] (or H_m[a, b])
        Hm = paley_matrix(m).to(y.dtype).to(y.device)
        y = torch.einsum("ab,...bp->...ap", Hm if transpose else Hm.t(), y)
    return y.reshape(x.shape) / math.sqrt(n)


@dataclass
class RandomHadamard:
    """QuaRot's random orthogonal Q = diag(s) H / √n with random signs s (seeded): x ↦ x Q."""

    signs: torch.Tensor  # (n,) ±1

    @classmethod
    def draw(cls, n: int, *, seed: int = 0) -> RandomHadamard:
        split_order(n)  # fail early on unsupported sizes
        g = torch.Generator().manual_seed(seed)
        return cls(torch.randint(0, 2, (n,), generator=g).double() * 2 - 1)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """x Q along the last dimension (rows of a weight: W ↦ W Q)."""
        return hadamard_transform(x * self.signs.to(x.dtype).to(x.device))

    def apply_transposed(self, x: torch.Tensor) -> torch.Tensor:
        """x Qᵀ = (x H / √n) ⊙ s, the inverse rotation."""
        return hadamard_transform(x, transpose=True) * self.signs.to(x.dtype).to(x.device)

    def matrix(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        return self.apply(torch.eye(self.signs.numel(), dtype=torch.float64)).to(dtype)
