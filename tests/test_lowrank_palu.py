"""Palu's low-rank KV cache: the decomposition, and a cache of latents that reproduces the low-rank
model's full-cache attention at cache_ratio of the bytes."""

from __future__ import annotations

import pytest
import torch

from reference_impls.common.generation import measure_cache
from reference_impls.common.models import tiny_model
from reference_impls.kv_cache.palu import palu_decompose, palu_model


def test_decomposition():
    W = torch.randn(32, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    B, A = palu_decompose(W, rank=32)
    torch.testing.assert_close(B @ A, W)
    torch.testing.assert_close(B.T @ B, torch.eye(32, dtype=torch.float64))
    B, A = palu_decompose(W, rank=8)
    s = torch.linalg.svdvals(W)
    assert float(((W - B @ A) ** 2).sum()) == pytest.approx(float((s[8:] ** 2).sum()), rel=1e-9)


@pytest.mark.parametrize("group_heads", [0, 1])
def test_latent_cache_matches_full_cache_of_the_low_rank_model(group_heads):
    model = tiny_model("llama").eval()  # 2 KV heads of 16 dims
    policy, rank, g = palu_model(model, cache_ratio=0.5, group_heads=group_heads)
    assert rank == int(0.5 * g * 16)
    k = model.model.layers[0].self_attn.k_proj.weight.detach()
    assert int(torch.linalg.matrix_rank(k.double(), rtol=1e-5)) == rank * (2 // g)
    ids = torch.randint(0, 128, (2, 48), generator=torch.Generator().manual_seed(1))
    m = measure_cache(model, policy, prompts=ids[:, :24], heldout=ids, prefill=24, max_new_tokens=8)
    assert m["next_token_kl"] < 1e-6 and m["token_match_rate"] == 1.0
    assert m["kv_bytes_final"] * 2 == pytest.approx(m["kv_bytes_full"], rel=0.02)
