"""LoRC (ZeroQuant-V2's low-rank compensation): oracles on the error's SVD, and its storage."""

from __future__ import annotations

import pytest
import torch

from reference_impls.common.adapters import adapter_for
from reference_impls.common.models import LoadedModel, tiny_model
from reference_impls.common.runner import RunContext
from reference_impls.common.storage import low_rank_bits, quantized_bits
from reference_impls.low_rank.lorc import lorc_compensate, run_lorc
from reference_impls.quantization.rtn import rtn_quantize


def test_hand_case():
    W = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    base = torch.tensor([[0.0, 0.0], [0.0, 0.5]])  # error diag(1, 0.5): rank 1 restores the larger
    torch.testing.assert_close(lorc_compensate(W, base, rank=1), torch.tensor([[1.0, 0.0], [0.0, 0.5]]))


def test_error_is_the_discarded_spectrum_of_the_quantization_error():
    W = torch.randn(48, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    Q = rtn_quantize(W, bits=3)
    s = torch.linalg.svdvals(W - Q)
    for k in (0, 4, 16):
        err = float(((W - lorc_compensate(W, Q, rank=k)) ** 2).sum())
        assert err == pytest.approx(float((s[k:] ** 2).sum()), rel=1e-9)
    torch.testing.assert_close(lorc_compensate(W, Q, rank=0), Q)
    torch.testing.assert_close(lorc_compensate(W, Q, rank=48), W)


def test_model_level_storage_and_error():
    model = tiny_model("llama")
    ctx = RunContext(loaded=LoadedModel("tiny", model, None, adapter_for(model), torch.device("cpu")))
    m = run_lorc(ctx, rank=4, base="rtn", bits=3, group_size=32, sparsity=0.5)
    assert m["weight_error_lorc"] < m["weight_error_base"]
    n_w, bits = ctx.ledger.layers["model.layers.0.mlp.down_proj"]  # (64, 160)
    expected = quantized_bits(64, 160, bits=3, group_size=32) + low_rank_bits(64, 160, rank=4)
    assert (n_w, bits) == (64 * 160, expected)
    model2 = tiny_model("llama")
    ctx2 = RunContext(loaded=LoadedModel("tiny", model2, None, adapter_for(model2), torch.device("cpu")))
    m2 = run_lorc(ctx2, rank=4, base="magnitude", bits=4, group_size=-1, sparsity=0.5)
    assert m2["weight_error_lorc"] < m2["weight_error_base"]
    # half the weights as a bitmask/CSR encoding plus the 16-bit factors: below dense, above the factors
    sparse_bits = ctx2.ledger.layers["model.layers.0.mlp.down_proj"][1]
    assert low_rank_bits(64, 160, rank=4) < sparse_bits < 16 * 64 * 160
    with pytest.raises(ValueError, match="--bits"):
        run_lorc(ctx, rank=4, base="rtn", bits=1, group_size=-1, sparsity=0.5)
