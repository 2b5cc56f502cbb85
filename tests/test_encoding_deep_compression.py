"""Deep Compression: hand-checked k-means and codes, the grouped centroid gradient, lossless decoding
of the stored codes, and the model-level pipeline on a tiny model."""

from __future__ import annotations

import pytest
import torch

from reference_impls.common.adapters import adapter_for
from reference_impls.common.models import LoadedModel, tiny_model
from reference_impls.common.runner import RunContext
from reference_impls.encoding.deep_compression import (
    SharedWeight,
    huffman_code_layer,
    kmeans_1d,
    run_deep_compression,
    share_weights,
)


def test_kmeans_hand_case():
    x = torch.tensor([0.0, 0.1, 0.2, 0.9, 1.0, 1.1])
    C, idx = kmeans_1d(x, k=2)  # linear init at 0 and 1.1, then the two obvious clusters
    torch.testing.assert_close(C, torch.tensor([0.1, 1.0]))
    assert idx.tolist() == [0, 0, 0, 1, 1, 1]
    # Lloyd never increases the quantization error of its linear initialisation
    x = torch.randn(5000, generator=torch.Generator().manual_seed(0))
    C, idx = kmeans_1d(x, k=8)
    init = torch.linspace(float(x.min()), float(x.max()), 8)
    init_err = ((x[:, None] - init) ** 2).min(1).values.sum()
    assert ((x - C[idx]) ** 2).sum() < init_err


def test_share_weights_prunes_and_codes_losslessly():
    W = torch.randn(32, 48, generator=torch.Generator().manual_seed(1))
    mask, C, idx = share_weights(W, sparsity=0.75, bits=3)
    assert int(mask.sum()) == 32 * 48 // 4 and W[mask].abs().min() >= W[~mask].abs().max()
    assert C.numel() == 8 and int(idx[mask].max()) <= 7
    coded = huffman_code_layer(mask, C, idx, bits=3)
    shared = torch.where(mask, C.half().float()[idx], torch.zeros(()))
    assert torch.equal(coded.decode(), shared)  # bit-exact
    # Huffman never does worse than fixed-width indices plus the positions' 1-bit mask, by much
    n_kept = int(mask.sum())
    books = coded.gaps.codebook_bits + coded.index.codebook_bits + 8 * 16
    assert coded.bits < n_kept * 3 + mask.numel() + books + 64


def test_centroid_gradient_is_the_sum_over_each_cluster():
    torch.manual_seed(2)
    lin = torch.nn.Linear(6, 4, bias=False)
    mask, C, idx = share_weights(lin.weight.detach(), sparsity=0.5, bits=2)
    torch.nn.utils.parametrize.register_parametrization(lin, "weight", SharedWeight(C, idx, mask))
    x = torch.randn(10, 6)
    lin(x).pow(2).sum().backward()
    # ∂L/∂W computed by hand for the same weight, summed per cluster over kept positions (§3.3)
    W = (C[idx] * mask).requires_grad_(True)
    (x @ W.T).pow(2).sum().backward()
    expected = torch.zeros(4).index_add_(0, idx[mask], W.grad[mask])
    torch.testing.assert_close(lin.parametrizations.weight[0].centroids.grad, expected)


def test_model_level_pipeline():
    model = tiny_model("llama")
    ctx = RunContext(loaded=LoadedModel("tiny", model, None, adapter_for(model), torch.device("cpu")))
    g = torch.Generator().manual_seed(0)
    batches = [{"input_ids": torch.randint(0, 128, (2, 32), generator=g)} for _ in range(2)]
    ctx.__dict__["calibration"] = batches
    m = run_deep_compression(ctx, sparsity=0.5, bits=3, max_steps=3, time_budget=0.0, lr=1e-3)
    assert m["round_trip_exact"] and m["finetune_steps"] == 3
    assert m["finetune_loss_last"] < m["finetune_loss_first"] + 1e-3
    w = model.model.layers[0].mlp.up_proj.weight
    assert not torch.nn.utils.parametrize.is_parametrized(model.model.layers[0].mlp.up_proj)
    assert (w == 0).float().mean() == pytest.approx(0.5, abs=1e-3) and len(torch.unique(w[w != 0])) <= 8
    assert ctx.ledger.bits_per_weight() < m["bits_before_huffman"] + 1 < 16
