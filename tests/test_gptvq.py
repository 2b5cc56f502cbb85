"""GPTVQ: the EM pieces by hand, the sweep against GPTQ, codes, storage and baselines."""

import re

import pytest
import torch

from reference_impls.quantization.gptq import gptq_quantize
from reference_impls.quantization.gptvq import (
    assign,
    em_codebook,
    gptvq,
    gptvq_bits,
    mahalanobis_init,
    round_codebook,
    weighted_means,
)
from reference_impls.quantization.rtn import minmax_params, rtn_quantize


def _layer(n_out=64, n_in=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(n_in, n_in, generator=g, dtype=torch.float64) / n_in**0.5
    X = torch.randn(2048, n_in, generator=g, dtype=torch.float64) @ (torch.eye(n_in) + 2 * mix)  # correlated
    return torch.randn(n_out, n_in, generator=g, dtype=torch.float64), 2 / X.shape[0] * X.T @ X


def _output_error(W, Q, H):
    E = W - Q
    return float(torch.trace(E @ H @ E.T))


def test_assignment_and_weighted_mean_by_hand():
    X = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [4.0, 4.0], [5.0, 5.0]]])  # (1, 4, 2)
    C = torch.tensor([[[0.0, 1.0], [4.0, 5.0]]])
    assert assign(X, C).tolist() == [[0, 0, 1, 1]]
    w = torch.tensor([[[1.0, 1.0], [3.0, 1.0], [1.0, 1.0], [1.0, 1.0]]])  # point 1 counts 3x in dim 0
    means = weighted_means(X, assign(X, C), 2, w)
    assert means.tolist() == [[[0.75, 0.0], [4.5, 4.5]]]  # (0·1 + 1·3) / 4 = 0.75
    # weights change the look-up: far in a coordinate that does not count is near
    assert assign(torch.tensor([[[3.0, 0.0]]]), C, torch.tensor([[[0.0, 1.0]]])).tolist() == [[0]]


def test_mahalanobis_init_takes_evenly_spaced_ranks():
    X = torch.tensor([[[0.0], [1.0], [2.0], [3.0], [10.0]]])  # distances to the mean 3.2 rank 3, 2, 1, 0, 10
    assert mahalanobis_init(X, 3).flatten().tolist() == [3.0, 1.0, 10.0]


def test_codebooks_are_integers_times_one_scale():
    C = torch.tensor([[[0.5, -1.27], [0.013, 1.0]]])
    R = round_codebook(C, 8)
    scale = 1.27 / 127
    assert torch.allclose(R / scale, torch.round(R / scale), atol=1e-4) and (R - C).abs().max() <= scale / 2


def test_scalar_codebook_equal_to_the_grid_is_gptq():
    """vq_dim 1, one codebook per row holding GPTQ's min-max grid: the sweep is GPTQ's, bit for bit."""
    W, H = _layer()
    bits = 3

    def grid(X, _weights, k):  # X (rows, in, 1): each row's own grid levels
        scale, zero = minmax_params(X[..., 0], bits=bits, sym=False)
        return ((torch.arange(k, dtype=X.dtype) - zero[:, None]) * scale[:, None]).unsqueeze(-1)

    ours = gptvq(W, H, bits=bits, vq_dim=1, columns_per_group=256, group_size=256, block_size=256,
                 hessian_weighted=False, fit=grid).weight
    assert torch.allclose(ours, gptq_quantize(W, H, bits=bits), atol=1e-10)


def test_codes_rebuild_the_weight_and_storage_counts_every_codebook():
    W, H = _layer()
    res = gptvq(W, H, bits=2, vq_dim=2, columns_per_group=128, group_size=2048)
    assert len(res.codebooks) == 2 and res.codebooks[0].shape == (4, 16, 2)  # 64 rows / 16 per codebook
    rebuilt = torch.cat([torch.gather(res.codebooks[c // 64], 1,
                                      res.codes[:, c].view(4, 16, 1).expand(-1, -1, 2)).reshape(64, 2)
                         for c in range(128)], dim=1)
    assert torch.equal(rebuilt, res.weight)
    indices, codebooks = 16384 * 2, 8 * 16 * 2 * 8  # 8 codebooks of 16 two-dimensional 8-bit centroids
    assert gptvq_bits(64, 256, bits=2, vq_dim=2, group_size=2048, codebook_bits=8) == indices + codebooks


def test_error_feedback_and_vectors_beat_the_baselines():
    W, H = _layer()
    vq = gptvq(W, H, bits=2, vq_dim=2, group_size=2048).weight  # 2.125 bits/weight
    no_feedback = gptvq(W, torch.eye(256, dtype=H.dtype), bits=2, vq_dim=2, group_size=2048).weight
    rtn = rtn_quantize(W, bits=2, group_size=128)  # 2.25 bits/weight with 16-bit scale and zero
    gptq = gptq_quantize(W, H, bits=2, group_size=128)
    err = {name: _output_error(W, Q, H) for name, Q in
           (("gptvq", vq), ("no_feedback", no_feedback), ("rtn", rtn), ("gptq", gptq))}
    assert err["gptvq"] < err["no_feedback"] and err["gptvq"] < err["gptq"] < err["rtn"], err


def test_bad_shapes_are_one_line_errors():
    W, H = _layer(n_out=60)
    with pytest.raises(ValueError, match=re.escape("group_size / columns_per_group | out features")):
        gptvq(W, H, group_size=2048)
    fit = em_codebook(0, None)
    with pytest.raises(ValueError, match="vq_dim 3"):
        gptvq(W[:48], H, vq_dim=3, fit=fit)
