"""SpQR: no outliers + 16-bit statistics + whole rows == GPTQ; outliers, bilevel statistics, bits."""

import pytest
import torch
from lowbit_fixtures import tiny_ctx

from reference_impls.quantization.gptq import gptq_quantize
from reference_impls.quantization.spqr import (
    SpQRConfig,
    leave_one_out_reduction,
    quantize_stats,
    run_spqr,
    spqr,
    spqr_bits,
)

INF = float("inf")


def problem(seed, out=64, n_in=128, n=1024):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, n_in, generator=g) @ (torch.eye(n_in) + 0.3 * torch.randn(n_in, n_in, generator=g))
    w = torch.randn(out, n_in, generator=g)
    w[torch.rand(out, n_in, generator=g) < 0.01] *= 8.0  # a few large weights
    return w, 2.0 / n * x.t() @ x


def proxy(w, q, h):
    d = (w - q).double()
    return torch.trace(d @ h.double() @ d.t()).item()


@pytest.mark.parametrize("bits", [2, 3])
def test_without_its_additions_spqr_is_gptq(bits):
    w, h = problem(bits)
    res = spqr(w, h, SpQRConfig(bits, -1, 0, 16, INF), act_order=False)
    assert torch.equal(res.weight, gptq_quantize(w, h, bits=bits))
    assert res.bits == 64 * 128 * bits + 64 * (16 + bits)  # = quantized_bits(64, 128, bits=bits)


def test_outliers_follow_the_threshold_and_are_counted():
    w, h = problem(0)
    runs = {t: spqr(w, h, SpQRConfig(3, 16, 3, 16, t)) for t in (INF, 1.0, 0.2)}
    counts = [int(runs[t].outliers.sum()) for t in (INF, 1.0, 0.2)]
    assert counts[0] == 0 < counts[1] < counts[2]  # a lower τ keeps more weights in 16 bits
    errors = [proxy(w, runs[t].weight, h) for t in (INF, 1.0, 0.2)]
    assert errors[0] > errors[1] > errors[2]
    for t in (1.0, 0.2):  # every outlier costs its 16-bit value and 16-bit column index (+ CSR rows)
        assert runs[t].bits - runs[INF].bits == 32 * int(runs[t].outliers.sum()) + 65 * 32


def test_small_groups_with_bilevel_stats_beat_per_row_gptq():
    w, h = problem(1)
    res = spqr(w, h, SpQRConfig(3, 16, 3, 16, INF))
    assert proxy(w, res.weight, h) < 0.5 * proxy(w, gptq_quantize(w, h, bits=3), h)
    # bits: codes, 3-bit scale and zero per row per group, 2 × (16-bit scale, zero) per 16 rows per
    # group, 7-bit permutation index per column
    groups = 128 // 16
    assert res.bits == 64 * 128 * 3 + 64 * groups * 6 + 4 * groups * 64 + 128 * 7
    assert res.bits == spqr_bits(64, 128, SpQRConfig(3, 16, 3, 16, INF), 0, True)


def test_second_level_has_2_to_the_qq_bits_levels():
    v = torch.rand(64, generator=torch.Generator().manual_seed(0)) + 0.1
    q = quantize_stats(v, bits=3, group=16)
    for g in q.reshape(4, 16):
        assert g.unique().numel() <= 8
    assert (q - v).abs().max() <= (v.max() - v.min()) / 7 / 2 + 1e-6
    assert torch.allclose(q.reshape(4, 16).amin(1), v.reshape(4, 16).amin(1))  # min-max ends are exact


def test_leave_one_out_by_hand():
    # one row [0, 0.1, 0.2, 3]: leaving out 3 lets the grid fit [0, 0.2] exactly at 2 bits (step 0.2/3)
    Wg = torch.tensor([[0.0, 0.1, 0.2, 3.0]])
    red = leave_one_out_reduction(Wg, torch.ones(4), bits=2)
    assert red.argmax().item() == 3
    # base error: grid step 1 on [0, 3]: errors 0, 0.1, 0.2, 0 -> 0.05; without the 3: step 0.2/3
    step = 0.2 / 3
    err_wo = (0.1 - round(0.1 / step) * step) ** 2
    assert red[0, 3].item() == pytest.approx(0.05 - err_wo, abs=1e-6)


def test_model_entry_on_tiny_llama():
    ctx = tiny_ctx()
    m = run_spqr(ctx, bits=3, group_size=16, qq_bits=3, qq_group=16, outlier_threshold=0.2,
                 act_order=True, damp=0.01)
    assert m["outliers"] > 0 and 0 < m["outlier_fraction"] < 0.1
    assert 3.4 < ctx.ledger.bits_per_weight() < 3 + 0.375 + 0.25 + 0.1 + 32 * m["outlier_fraction"] + 0.5
    with pytest.raises(ValueError, match="--qq-group"):
        run_spqr(tiny_ctx(), bits=3, group_size=16, qq_bits=3, qq_group=24, outlier_threshold=0.2,
                 act_order=True, damp=0.01)
