"""SqueezeLLM: 2^bits centroids per row, Fisher weighting moves them, k-means as good as scikit-learn's,
dense-and-sparse keeps its outliers exactly and counts them."""

import pytest
import torch
from lowbit_fixtures import tiny_ctx
from sklearn.cluster import KMeans

from reference_impls.quantization.rtn import rtn_quantize
from reference_impls.quantization.squeezellm import (
    fisher_diagonal,
    run_squeezellm,
    sparse_mask,
    squeezellm_quantize,
    weighted_kmeans,
)


def rows(seed, n_rows=4, n=300):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n_rows, n, generator=g, dtype=torch.float64), torch.rand(n_rows, n, generator=g,
                                                                               dtype=torch.float64) ** 4


def cost(x, f, C, codes):
    return (f * (x - torch.gather(C, 1, codes)).pow(2)).sum().item()


def test_kmeans_matches_scikit_learn_objective():
    x, f = rows(0)
    C, codes = weighted_kmeans(x, f, k=8)
    ours = cost(x, f, C, codes)
    km = KMeans(8, n_init=3, random_state=0, max_iter=50)
    ref = sum(km.fit(r.numpy()[:, None], sample_weight=w.numpy()).inertia_ for r, w in zip(x, f, strict=True))
    assert ours < 1.1 * ref
    # each code points at the nearest centroid, and each centroid is its cluster's weighted mean
    assert torch.equal(codes, (x[:, :, None] - C[:, None, :]).abs().argmin(-1))
    for r in range(4):
        for j in range(8):
            sel = codes[r] == j
            if sel.any():
                assert C[r, j] == pytest.approx(((f[r] * x[r])[sel].sum() / f[r][sel].sum()).item(), rel=1e-6)


def test_codebook_has_2_to_the_bits_entries_and_weighting_changes_it():
    x, f = rows(1)
    w, fisher = x.float(), f.float()
    for bits in (2, 3):
        q, mask, C = squeezellm_quantize(w, fisher, bits=bits)
        assert C.shape == (4, 2**bits) and not mask.any()
        assert max(r.unique().numel() for r in q) <= 2**bits
    _, _, C_w = squeezellm_quantize(w, fisher, bits=3)
    q_u, _, C_u = squeezellm_quantize(w, torch.ones_like(fisher), bits=3)
    assert not torch.allclose(C_w, C_u, atol=1e-3)
    q_w = squeezellm_quantize(w, fisher, bits=3)[0]
    # the Fisher-weighted codebook wins on the Fisher-weighted error, and both beat a uniform grid
    err = lambda q: (fisher * (w - q).pow(2)).sum().item()  # noqa: E731
    assert err(q_w) < err(q_u) < err(rtn_quantize(w, bits=3))


def test_dense_and_sparse():
    x, f = rows(2)
    w, fisher = x.float(), f.float()
    mask = sparse_mask(w, fisher, outlier_ratio=0.02, sensitive_ratio=0.01)
    n = w.numel()
    assert mask.sum() <= round(0.02 * n) + round(0.01 * n)
    assert (w[mask].abs().max() == w.abs().max())
    q, m2, _ = squeezellm_quantize(w, fisher, bits=2, outlier_ratio=0.02, sensitive_ratio=0.01)
    assert torch.equal(m2, mask) and torch.equal(q[mask], w[mask])


def test_fisher_and_model_entry_on_tiny_llama():
    ctx = tiny_ctx()
    fisher = fisher_diagonal(ctx.model, ctx.calibration)
    name = "model.layers.0.mlp.down_proj"
    assert fisher[name].shape == (64, 160) and (fisher[name] > 0).any()
    assert not any(p.requires_grad is False for p in ctx.model.parameters())  # flags restored
    m = run_squeezellm(ctx, bits=3, outlier_ratio=0.004, sensitive_ratio=0.0005, iters=20)
    assert m["sparse_weights"] > 0
    # codes (3) + a 16-bit codebook of 8 per row + the sparse part (~0.45% at 16 bits + indices)
    assert 3 + 8 * 16 / 160 < ctx.ledger.bits_per_weight() < 3 + 8 * 16 / 64 + 0.5
    with pytest.raises(ValueError, match="--outlier-ratio"):
        run_squeezellm(tiny_ctx(), bits=3, outlier_ratio=0.7, sensitive_ratio=0.0, iters=5)
