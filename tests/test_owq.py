"""OWQ: with no weak columns it is GPTQ; weak columns stay in 16 bits, absorb updates and help."""

import pytest
import torch
from lowbit_fixtures import tiny_ctx

from reference_impls.quantization.gptq import gptq_quantize
from reference_impls.quantization.owq import column_sensitivity, owq_bits, owq_quantize, run_owq
from reference_impls.quantization.rtn import rtn_quantize


def problem(seed, out=64, n_in=128, n=1024):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, n_in, generator=g) @ (torch.eye(n_in) + 0.2 * torch.randn(n_in, n_in, generator=g))
    x[:, :4] *= 20.0  # activation-outlier channels: their weight columns are weak
    return torch.randn(out, n_in, generator=g), 2.0 / n * x.t() @ x


def proxy(w, q, h):
    d = (w - q).double()
    return torch.trace(d @ h.double() @ d.t()).item()


@pytest.mark.parametrize("act_order", [False, True])
def test_no_weak_columns_is_gptq(act_order):
    w, h = problem(0)
    q, weak = owq_quantize(w, h, bits=3, n_weak=0, act_order=act_order)
    assert weak.numel() == 0
    assert torch.equal(q, gptq_quantize(w, h, bits=3, act_order=act_order))


def test_sensitivity_by_hand():
    w = torch.tensor([[0.0, 1.0, 0.5], [1.0, -1.0, 0.3]])
    h = torch.diag(torch.tensor([1.0, 2.0, 10.0]))
    err = (w - rtn_quantize(w, bits=2)).pow(2).sum(0)
    assert torch.allclose(column_sensitivity(w, h, bits=2), torch.tensor([1.0, 2.0, 10.0]) * err)
    assert torch.equal(column_sensitivity(w, h, bits=2, kind="hessian"), torch.tensor([1.0, 2.0, 10.0]))


def test_weak_columns_are_the_outlier_inputs_and_help():
    w, h = problem(1)
    q, weak = owq_quantize(w, h, bits=3, n_weak=4)
    assert sorted(weak.tolist()) == [0, 1, 2, 3]
    base = gptq_quantize(w, h, bits=3)
    assert proxy(w, q, h) < 0.5 * proxy(w, base, h)
    # the quantized columns sit on one per-row grid of at most 8 levels; weak columns do not
    normal = q[:, 4:]
    assert max(row.unique().numel() for row in normal) <= 8
    assert min(row.unique().numel() for row in q[:, :4].t()) == 64  # free 16-bit values
    assert not torch.equal(q[:, :4], w[:, :4])  # they took the GPTQ updates of earlier columns
    assert owq_bits(64, 128, bits=3, n_weak=4) == 64 * 124 * 3 + 64 * 19 + 4 * (64 * 16 + 16)


def test_model_entry_on_tiny_llama():
    ctx = tiny_ctx()
    m = run_owq(ctx, bits=3, weak_ratio=0.05, act_order=False, sensitivity="paper", damp=0.01)
    assert m["weak_columns"] > 0
    assert 3.5 < ctx.ledger.bits_per_weight() < 4.5  # 5% of columns at 16 bits
    with pytest.raises(ValueError, match="--weak-ratio"):
        run_owq(tiny_ctx(), bits=3, weak_ratio=1.5, act_order=False, sensitivity="paper", damp=0.01)
