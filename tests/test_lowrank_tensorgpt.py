"""Tensor-train cores (DESIGN §6) against tensorly's TT-SVD, and TensorGPT's per-token embedding."""

from __future__ import annotations

import numpy as np
import pytest
import tensorly as tl
import torch
from tensorly.decomposition import tensor_train

from reference_impls.low_rank.tensor_train import capped_ranks, tt_decompose, tt_params, tt_reconstruct
from reference_impls.low_rank.tensorgpt import balanced_shape, tensorgpt_compress


def test_full_ranks_reconstruct_exactly_and_count_matches_formula():
    T = torch.randn(3, 4, 5, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    cores = tt_decompose(T, ranks=[1, 100, 100, 100, 1])  # capped to what the data allows
    assert [tuple(c.shape) for c in cores] == [(1, 3, 3), (3, 4, 10), (10, 5, 2), (2, 2, 1)]
    torch.testing.assert_close(tt_reconstruct(cores), T)
    assert sum(c.numel() for c in cores) == tt_params((3, 4, 5, 2), [1, 100, 100, 100, 1])
    assert tt_params((3, 4, 5, 2), [1, 2, 2, 2, 1]) == 1 * 3 * 2 + 2 * 4 * 2 + 2 * 5 * 2 + 2 * 2 * 1


def test_tt_reconstruct_hand_case():
    # rank-1 train: T[i,j] = a_i · b_j
    a, b = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0, 5.0])
    T = tt_reconstruct([a.reshape(1, 2, 1), b.reshape(1, 3, 1)])
    torch.testing.assert_close(T, torch.outer(a, b))


@pytest.mark.parametrize("shape,ranks", [((4, 8, 8), [1, 2, 3, 1]), ((6, 5, 4, 3), [1, 3, 4, 2, 1]),
                                         ((16, 16), [1, 5, 1])])
def test_agrees_with_tensorly(shape, ranks):
    g = torch.Generator().manual_seed(1)
    T = torch.randn(*shape, generator=g, dtype=torch.float64)
    ours = tt_decompose(T, ranks=ranks)
    tl.set_backend("numpy")
    ref = tensor_train(T.numpy(), rank=ranks)
    assert [tuple(c.shape) for c in ours] == [c.shape for c in ref.factors]
    # cores agree up to the sign of each singular vector; the reconstructions agree exactly
    np.testing.assert_allclose(tt_reconstruct(ours).numpy(), tl.tt_to_tensor(ref), rtol=1e-8, atol=1e-10)
    assert capped_ranks(shape, ranks) == list(ref.rank)


def test_truncation_error_is_below_a_random_tt_of_the_same_ranks():
    T = torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    approx = tt_reconstruct(tt_decompose(T, ranks=[1, 2, 4, 1]))
    # TT-SVD error bound (Oseledets Thm 2.2): ‖T − T̃‖² ≤ Σ_k (discarded σ² of unfolding k)
    bound = 0.0
    for k, r in ((1, 2), (2, 4)):
        s = torch.linalg.svdvals(T.reshape(int(np.prod(T.shape[:k])), -1))
        bound += float((s[r:] ** 2).sum())
    assert float(((T - approx) ** 2).sum()) <= bound + 1e-9


def test_tensorgpt_per_token_and_ratio():
    assert balanced_shape(256, 3) == (4, 8, 8) and balanced_shape(384, 3) == (6, 8, 8)
    assert balanced_shape(256, 2) == (16, 16)
    E = torch.randn(10, 24, generator=torch.Generator().manual_seed(3))
    W, n = tensorgpt_compress(E, shape=(2, 3, 4), rank=2)
    # each token is its own tensor train: row 5 equals TT-SVD of that row alone
    alone = tt_reconstruct(tt_decompose(E[5].reshape(2, 3, 4), ranks=[1, 2, 2, 1]))
    torch.testing.assert_close(W[5], alone.reshape(24))
    assert n == 10 * tt_params((2, 3, 4), [1, 2, 2, 1]) == 10 * (1 * 2 * 2 + 2 * 3 * 2 + 2 * 4 * 1)
    full, n_full = tensorgpt_compress(E, shape=(2, 3, 4), rank=12)
    torch.testing.assert_close(full, E, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="--shape"):
        tensorgpt_compress(E, shape=(5, 5), rank=2)


def test_tensorgpt_on_a_tiny_model_records_the_cores():
    from reference_impls.common.adapters import adapter_for
    from reference_impls.common.models import LoadedModel, tiny_model
    from reference_impls.common.runner import RunContext
    from reference_impls.low_rank.tensorgpt import run_tensorgpt

    model = tiny_model("llama")  # vocab 128, hidden 64
    E = model.get_input_embeddings().weight.detach().clone()
    ctx = RunContext(loaded=LoadedModel("tiny", model, None, adapter_for(model), torch.device("cpu")))
    m = run_tensorgpt(ctx, rank=2, order=3, shape="")
    assert m["tt_shape"] == [4, 4, 4] and m["tt_ranks"] == [1, 2, 2, 1]
    assert m["tt_params"] == 128 * (8 + 16 + 8)
    assert ctx.ledger.layers["embedding"] == (128 * 64, 16 * m["tt_params"])
    assert m["compression_ratio"] == pytest.approx(64 / 32)
    W = model.get_input_embeddings().weight.detach()
    assert m["embedding_rel_error"] == pytest.approx(float((W - E).norm() / E.norm()), rel=1e-5)
    assert m["embedding_rel_error"] > 0.1  # rank 2 of a random 4x4x4 tensor: a real truncation
    with pytest.raises(ValueError, match="--shape"):
        run_tensorgpt(ctx, rank=2, order=3, shape="4,x")
