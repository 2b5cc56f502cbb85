"""QuIP: LDL by hand, identity-rotation QuIP == GPTQ (Theorem 6), incoherence helps at 2 bits."""

import pytest
import torch
from lowbit_fixtures import tiny_ctx

from reference_impls.quantization.gptq import gptq_quantize
from reference_impls.quantization.quip import kron_orthogonal, ldl_upper, ldlq, quip_quantize, run_quip


def problem(seed, out=32, n_in=96, n=512):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, n_in, generator=g, dtype=torch.float64)
    f64 = torch.float64
    mix = torch.eye(n_in, dtype=f64) + 0.3 * torch.randn(n_in, n_in, generator=g, dtype=f64)
    x = x @ mix
    x = x * torch.logspace(-1, 1, n_in, dtype=torch.float64)  # skewed input scales
    w = torch.randn(out, n_in, generator=g, dtype=torch.float64)
    w[3, 7] = 12.0  # one outlier weight: a coherent matrix
    return w, 2.0 / n * x.t() @ x


def proxy(w, q, h):
    d = w - q
    return torch.trace(d @ h @ d.t()).item()


def test_ldl_by_hand():
    # H = [[a, b], [b, c]] = [[1, u], [0, 1]] diag(d1, d2) [[1, 0], [u, 1]]: d2 = c, u = b/c, d1 = a − b²/c
    H = torch.tensor([[4.0, 2.0], [2.0, 5.0]], dtype=torch.float64)
    U, d = ldl_upper(H)
    assert torch.allclose(U, torch.tensor([[0.0, 0.4], [0.0, 0.0]], dtype=torch.float64))
    assert torch.allclose(d, torch.tensor([4 - 4 / 5, 5.0], dtype=torch.float64))
    w, h = problem(0)
    U, d = ldl_upper(h)
    eye = torch.eye(h.shape[0], dtype=torch.float64)
    assert torch.allclose((U + eye) @ torch.diag(d) @ (U + eye).t(), h)
    assert torch.equal(U, U.triu(1))


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_identity_rotation_equals_gptq(bits):
    w, h = problem(bits)
    h[5, :] = h[:, 5] = 0.0  # a dead input: both zero its column
    ref = gptq_quantize(w, h, bits=bits, block_size=32)
    assert torch.equal(ldlq(w, h, bits=bits), ref)
    assert torch.allclose(quip_quantize(w, h, bits=bits, rotation="identity"), ref)


def test_kron_is_orthogonal_and_incoherence_helps():
    U = kron_orthogonal(96, generator=torch.Generator().manual_seed(0))  # 8 ⊗ 12
    assert torch.allclose(U @ U.t(), torch.eye(96, dtype=torch.float64))
    w, h = problem(1)
    base = proxy(w, ldlq(w, h, bits=2), h)
    for rotation in ("kron", "hadamard"):
        q = quip_quantize(w, h, bits=2, rotation=rotation, seed=0)
        assert proxy(w, q, h) < 0.5 * base  # the outlier no longer sets the grid of its row


def test_bad_rotation():
    w, h = problem(0)
    with pytest.raises(ValueError, match="--rotation"):
        quip_quantize(w, h, rotation="givens")


def test_model_entry_on_tiny_llama():
    ctx = tiny_ctx()
    w0 = ctx.model.model.layers[0].mlp.down_proj.weight.detach().clone()
    run_quip(ctx, bits=3, rotation="kron", damp=0.01)
    w1 = ctx.model.model.layers[0].mlp.down_proj.weight
    assert not torch.equal(w0, w1) and torch.isfinite(w1).all()
    assert ctx.ledger.bits_per_weight() == pytest.approx(3 + (16 + 3) / 110, rel=0.05)
    with pytest.raises(ValueError, match="--bits"):
        run_quip(tiny_ctx(), bits=1, rotation="kron", damp=0.01)
