"""The distillation divergences (reference_impls/distillation/losses.py) against float64 transcriptions
of their definitions, their limits, and TRL's GKD loss."""

import math

import pytest
import torch

from reference_impls.distillation import losses as L


def _logits(*shape, seed=0, scale=3.0, dtype=torch.float32):
    return (scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed))).to(dtype)


def _softmax64(row, T):
    z = [x / T for x in row]
    m = max(z)
    e = [math.exp(x - m) for x in z]
    return [x / sum(e) for x in e]


def _kl64(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))


def _direct(s_logits, t_logits, fn, T=1.0):
    """Mean over positions of fn(p_S, p_T), written with Python floats (float64) row by row."""
    s_rows = s_logits.double().reshape(-1, s_logits.shape[-1]).tolist()
    t_rows = t_logits.double().reshape(-1, t_logits.shape[-1]).tolist()
    vals = [fn(_softmax64(s, T), _softmax64(t, T)) for s, t in zip(s_rows, t_rows, strict=True)]
    return sum(vals) / len(vals)


def _jsd64(beta):
    def fn(ps, pt):
        m = [(1 - beta) * a + beta * b for a, b in zip(ps, pt, strict=True)]
        return beta * _kl64(pt, m) + (1 - beta) * _kl64(ps, m)
    return fn


S, T_ = _logits(2, 3, 11, seed=1), _logits(2, 3, 11, seed=2)


def test_against_float64_transcriptions():
    assert L.forward_kl(S, T_, temperature=2.0).item() == pytest.approx(
        4.0 * _direct(S, T_, lambda ps, pt: _kl64(pt, ps), T=2.0), rel=1e-5)
    assert L.reverse_kl(S, T_, temperature=2.0).item() == pytest.approx(
        _direct(S, T_, lambda ps, pt: _kl64(ps, pt), T=2.0), rel=1e-5)
    for beta in (0.5, 0.1, 0.9):
        assert L.generalized_jsd(S, T_, beta=beta, temperature=1.5).item() == pytest.approx(
            _direct(S, T_, _jsd64(beta), T=1.5), rel=1e-5)
    a = 0.1

    def mix(p, q, w):  # (1 − w)·p + w·q
        return [(1 - w) * x + w * y for x, y in zip(p, q, strict=True)]

    assert L.skew_kl(S, T_, alpha=a).item() == pytest.approx(
        _direct(S, T_, lambda ps, pt: _kl64(pt, mix(ps, pt, a))), rel=1e-5)
    assert L.skew_reverse_kl(S, T_, alpha=a).item() == pytest.approx(
        _direct(S, T_, lambda ps, pt: _kl64(ps, mix(pt, ps, a))), rel=1e-5)


def test_float64_inputs_stay_float64():
    s, t = S.double(), T_.double()
    got = L.generalized_jsd(s, t, beta=0.5)
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(_direct(s, t, _jsd64(0.5)), rel=1e-12)


def test_mean_over_every_position_not_batchmean():
    per_row = [L.reverse_kl(S[i, j], T_[i, j]).item() for i in range(2) for j in range(3)]
    assert L.reverse_kl(S, T_).item() == pytest.approx(sum(per_row) / 6, rel=1e-6)


def test_temperature_squared_convention():
    for T in (0.5, 2.0, 4.0):
        base = L.forward_kl(S / T, T_ / T)  # KL at temperature T without the factor
        assert L.forward_kl(S, T_, temperature=T).item() == pytest.approx(T * T * base.item(), rel=1e-5)
        assert L.reverse_kl(S, T_, temperature=T).item() == pytest.approx(
            L.reverse_kl(S / T, T_ / T).item(), rel=1e-5)  # no T² on the others
        assert L.generalized_jsd(S, T_, temperature=T).item() == pytest.approx(
            L.generalized_jsd(S / T, T_ / T).item(), rel=1e-5)


def test_jsd_endpoints_and_limits():
    fkl, rkl = L.forward_kl(S, T_).item(), L.reverse_kl(S, T_).item()
    assert L.generalized_jsd(S, T_, beta=0.0).item() == pytest.approx(fkl, rel=1e-6)  # TRL: KL(p_T‖p_S)
    assert L.generalized_jsd(S, T_, beta=1.0).item() == pytest.approx(rkl, rel=1e-6)  # TRL: KL(p_S‖p_T)
    s, t = S.double(), T_.double()
    eps = 1e-8  # JSD(β)/β → KL(P‖Q) as β → 0 and JSD(β)/(1−β) → KL(Q‖P) as β → 1 (GKD, P = teacher)
    assert L.generalized_jsd(s, t, beta=eps).item() / eps == pytest.approx(fkl, rel=1e-3)
    assert L.generalized_jsd(s, t, beta=1 - eps).item() / eps == pytest.approx(rkl, rel=1e-3)
    assert L.skew_kl(S, T_, alpha=0.0).item() == pytest.approx(fkl, rel=1e-6)
    assert L.skew_reverse_kl(S, T_, alpha=0.0).item() == pytest.approx(rkl, rel=1e-6)


ALL = [lambda s, t: L.forward_kl(s, t, temperature=2.0), L.reverse_kl,
       lambda s, t: L.generalized_jsd(s, t, beta=0.5), lambda s, t: L.generalized_jsd(s, t, beta=0.1),
       lambda s, t: L.generalized_jsd(s, t, beta=0.0), lambda s, t: L.generalized_jsd(s, t, beta=1.0),
       L.skew_kl, L.skew_reverse_kl]


@pytest.mark.parametrize("loss", ALL)
def test_zero_iff_equal(loss):
    assert abs(loss(T_, T_).item()) < 1e-6
    assert abs(loss(T_ + 5.0, T_).item()) < 1e-5  # a shift of every logit is the same distribution
    assert loss(S, T_).item() > 1e-3
    near = T_.clone()
    near[0, 0, 0] += 0.5  # one logit of one position: still strictly positive
    assert loss(near, T_).item() > 0


@pytest.mark.parametrize("loss", ALL)
def test_gradient_vanishes_at_the_teacher_and_points_to_it(loss):
    s = T_.clone().requires_grad_(True)
    loss(s, T_).backward()
    assert s.grad.abs().max().item() < 1e-5
    s = S.clone().requires_grad_(True)
    opt = torch.optim.Adam([s], lr=0.1)
    first = loss(s, T_).item()
    for _ in range(100):
        opt.zero_grad()
        loss(s, T_).backward()
        opt.step()
    assert loss(s, T_).item() < 0.2 * first


def test_skew_kl_has_the_official_cross_entropy_gradient():
    """distillm/losses.py returns −Σ p_T log(α p_T + (1−α) p_S): SKL plus the teacher entropy."""
    a = 0.1
    s1 = S.clone().requires_grad_(True)
    L.skew_kl(s1, T_, alpha=a).backward()
    s2 = S.clone().requires_grad_(True)
    pt, ps = T_.softmax(-1), s2.softmax(-1)
    official = -(pt * torch.log(a * pt + (1 - a) * ps)).sum(-1).mean()
    official.backward()
    entropy = -(pt * pt.log()).sum(-1).mean()
    assert L.skew_kl(S, T_, alpha=a).item() == pytest.approx((official - entropy).item(), rel=1e-5)
    torch.testing.assert_close(s1.grad, s2.grad, rtol=1e-4, atol=1e-7)


def test_bad_arguments():
    with pytest.raises(ValueError, match="beta"):
        L.generalized_jsd(S, T_, beta=1.5)
    with pytest.raises(ValueError, match="temperature"):
        L.forward_kl(S, T_, temperature=0.0)
    with pytest.raises(ValueError, match="shape"):
        L.reverse_kl(S, T_[..., :5])
    with pytest.raises(ValueError, match="alpha"):
        L.skew_kl(S, T_, alpha=1.0)


def test_agrees_with_trl_gkd_loss():
    """TRL's GKDTrainer.generalized_jsd_loss on random logits; labels all valid, so its 'batchmean'
    divides by the number of positions — the mean over positions of DESIGN §6."""
    pytest.importorskip("trl")
    import os
    import warnings

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from trl.experimental.gkd import GKDTrainer
    s, t = _logits(3, 7, 50, seed=5), _logits(3, 7, 50, seed=6)
    labels = torch.zeros(3, 7, dtype=torch.long)
    for beta in (0.0, 0.1, 0.5, 0.9, 1.0):
        for temp in (1.0, 2.0):
            ref = GKDTrainer.generalized_jsd_loss(s, t, labels=labels, beta=beta, temperature=temp)
            ours = L.generalized_jsd(s, t, beta=beta, temperature=temp)
            assert ours.item() == pytest.approx(ref.item(), rel=1e-5, abs=1e-7), (beta, temp)
