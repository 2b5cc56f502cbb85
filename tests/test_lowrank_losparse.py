"""LoSparse: low-rank + structurally pruned residual; equivalences at the extremes, the official
row/column rule, the global threshold by hand, and storage on a tiny model."""

from __future__ import annotations

import torch

from reference_impls.common.adapters import adapter_for, get_weight
from reference_impls.common.models import LoadedModel, tiny_model
from reference_impls.common.runner import RunContext
from reference_impls.common.storage import low_rank_bits, rank_for_ratio
from reference_impls.low_rank.losparse import (
    global_keep_masks,
    line_importance,
    losparse_compress,
    low_rank_plus_residual,
    run_losparse,
)
from reference_impls.low_rank.svd import svd_compress


def test_extremes_are_exact_and_plain_svd():
    W = torch.randn(20, 30, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    LR, S = low_rank_plus_residual(W, rank=5)
    torch.testing.assert_close(LR + S, W)
    torch.testing.assert_close(LR, svd_compress(W, rank=5))
    torch.testing.assert_close(losparse_compress(W, torch.ones_like(W, dtype=torch.bool), rank=5), W)
    torch.testing.assert_close(losparse_compress(W, torch.zeros_like(W, dtype=torch.bool), rank=5),
                               svd_compress(W, rank=5))


def test_structured_scores_and_global_threshold_by_hand():
    imp = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert line_importance(imp, by_rows=True).tolist() == [[3.0, 3.0], [7.0, 7.0]]
    assert line_importance(imp, by_rows=False).tolist() == [[4.0, 6.0], [4.0, 6.0]]
    scores = {"a": torch.tensor([[3.0, 3.0], [7.0, 7.0]]), "b": torch.tensor([[1.0, 9.0]])}
    masks = global_keep_masks(scores, keep=0.5)  # 6 entries, 3 kept: 9, 7, 7
    assert masks["a"].tolist() == [[False, False], [True, True]] and masks["b"].tolist() == [[False, True]]


def test_tiny_model_storage_and_structure():
    model = tiny_model("llama")
    ctx = RunContext(loaded=LoadedModel("tiny", model, None, adapter_for(model), torch.device("cpu")))
    g = torch.Generator().manual_seed(0)
    batches = [{"input_ids": torch.randint(0, 128, (2, 32), generator=g)} for _ in range(2)]
    ctx.__dict__["calibration"] = batches
    q0 = get_weight(model.model.layers[0].self_attn.q_proj).detach().clone()
    m = run_losparse(ctx, ratio=0.3, keep=0.25)
    assert abs(m["sparse_kept"] - 0.25) < 0.02  # whole rows/columns: close to, not exactly, 25%
    k = rank_for_ratio(64, 64, 0.3)
    LR, _ = low_rank_plus_residual(q0, rank=k)
    S_kept = get_weight(model.model.layers[0].self_attn.q_proj).detach() - LR
    # q_proj keeps whole output rows of S: every row is either all kept or all zero
    rows = (S_kept.abs() > 1e-6).any(1)
    torch.testing.assert_close(S_kept[~rows], torch.zeros_like(S_kept[~rows]), atol=1e-6, rtol=0)
    n_kept = int(rows.sum()) * 64
    name = "model.layers.0.self_attn.q_proj"
    assert ctx.ledger.layers[name] == (64 * 64, low_rank_bits(64, 64, rank=k) + n_kept * 16 + 64)
