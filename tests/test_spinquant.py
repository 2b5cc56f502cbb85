"""SpinQuant: Cayley SGD stays on the orthogonal group and descends; learned rotations are an equivalent
transform; at 0 steps the quantized model is QuaRot's; the optimisation lowers the quantized loss."""

from types import SimpleNamespace

import pytest
import torch
from lowbit_fixtures import tiny_ctx
from torch.func import functional_call

from reference_impls.common.adapters import adapter_for
from reference_impls.common.hadamard import hadamard_matrix, hadamard_transform
from reference_impls.common.models import tiny_model
from reference_impls.common.rotation import online_hessian
from reference_impls.quantization import quarot
from reference_impls.quantization.spinquant import (
    SpinModel,
    across_heads,
    cayley_sgd_step,
    mean_quantized_loss,
    optimize_rotations,
    per_head,
    run_spinquant,
)


def _orthogonal(n, seed):
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64, generator=g))
    return q * torch.sign(torch.diagonal(r))


def _official_sgdg_step(R, G, lr):
    """facebookresearch/SpinQuant train_utils/optimizer.py (SGDG, momentum 0), transcribed in float64:
    the Cayley transform by its fixed-point loop (5 iterations)."""
    X = R / R.norm(dim=1, keepdim=True)  # `unity`, (p, n)
    V = -G.t()
    MX = V @ X
    W_hat = MX - 0.5 * X.t() @ (X @ MX)
    W = W_hat - W_hat.t()
    t = min(lr, 1.0 / (W.abs().sum(0).max().item() + 1e-8))
    Y = X.t() + t * V
    for _ in range(5):
        Y = X.t() + t * W @ (0.5 * (X.t() + Y))
    return Y.t()


def test_cayley_step_matches_the_official_loop_and_stays_orthogonal():
    R, G = _orthogonal(16, 0), torch.randn(16, 16, dtype=torch.float64)
    # small steps: the fixed-point loop has converged to the exact Cayley transform
    assert torch.allclose(cayley_sgd_step(R, G, lr=1e-3)[0], _official_sgdg_step(R, G, 1e-3), atol=1e-12)
    # the step-size rule caps α at 1/‖Y‖₁ whatever lr is; the exact transform stays orthogonal
    for seed in range(300):
        G = torch.randn(16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)) * 100
        R, alpha = cayley_sgd_step(R, G, lr=1.5)
        assert alpha < 1.5
    assert (R.t() @ R - torch.eye(16, dtype=torch.float64)).abs().max() < 1e-12


def test_cayley_sgd_minimises_over_rotations():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(64, 12, dtype=torch.float64, generator=g)
    R, T = _orthogonal(12, 1), _orthogonal(12, 2)
    if torch.det(T) * torch.det(R) < 0:  # Cayley steps keep det(R): aim inside R's component
        T[:, 0] = -T[:, 0]

    def f(R):
        return (X @ R - X @ T).pow(2).sum()

    f0 = f(R)
    for _ in range(400):
        Rg = R.clone().requires_grad_()
        f(Rg).backward()
        R = cayley_sgd_step(R, Rg.grad, lr=0.003)[0]
    assert f(R) < 1e-6 * f0
    assert torch.allclose(R, T, atol=1e-5)


def _tiny_with_norms(seed=0):
    m = tiny_model("llama", seed=seed)
    with torch.no_grad():  # non-trivial RMSNorm scales, so the fold is exercised
        for n, p in m.named_parameters():
            if "norm" in n:
                p.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(1))
    return m


IDS = torch.randint(0, 128, (2, 24), generator=torch.Generator().manual_seed(0))


def test_learned_rotations_leave_outputs_unchanged():
    m = _tiny_with_norms()
    with torch.no_grad():
        ref = m(input_ids=IDS).logits
    v_before = m.model.layers[0].self_attn.v_proj.weight.detach().clone()
    spin = SpinModel(m, adapter_for(m), seed=3)
    spin.R1, spin.R2s = _orthogonal(64, 5), [_orthogonal(16, 6 + i) for i in range(2)]  # any rotations
    R1, R2s = spin.R1.float(), [R.float() for R in spin.R2s]
    spin.set_quantizers(a_bits=16, a_clip=1.0, kv_bits=16, kv_clip=1.0)
    with torch.no_grad():  # the training path: weights built from R at every call
        trained = functional_call(m, spin.params(R1, R2s), args=(), kwargs={"input_ids": IDS}).logits
        spin.fuse()  # the deployment path: rotations written into the weights
        fused = m(input_ids=IDS).logits
    for out in (trained, fused):
        assert torch.allclose(out, ref, atol=1e-5 * ref.abs().max())
    assert not torch.allclose(m.model.layers[0].self_attn.v_proj.weight, v_before, atol=1e-3)  # R₂ fused


def test_heads_transform_and_its_hessian():
    x = torch.randn(10, 64, dtype=torch.float64)
    A = torch.kron(hadamard_matrix(4), torch.eye(16, dtype=torch.float64)) / 2  # H_heads ⊗ I
    assert torch.allclose(across_heads(x, 4), x @ A)
    # with R₂ = H̃_hd, the per-head and across-head parts multiply to QuaRot's full H̃ (Sylvester sizes)
    assert torch.allclose(across_heads(per_head(x, hadamard_matrix(16) / 4), 4), hadamard_transform(x))
    H = x.t() @ x
    assert torch.allclose(online_hessian(H, lambda t: across_heads(t, 4)), A.t() @ H @ A)


def test_zero_steps_is_quarot():
    """Same seed, no optimisation: SpinQuant's model with A4 activations and a 4-bit KV cache computes
    what QuaRot's does (R₂ = H̃ fused into v_proj equals QuaRot's online per-head Hadamard of values)."""
    ref, ours = _tiny_with_norms(), _tiny_with_norms()
    a = adapter_for(ref)
    quarot.rotate_model(ref, a, seed=3)
    quarot.add_online_hadamards(ref, a)
    quarot._quantize_activations(SimpleNamespace(model=ref, adapter=a), a_bits=4, a_clip=0.9, kv_bits=4,
                                 kv_clip=0.95)
    spin = SpinModel(ours, adapter_for(ours), seed=3)
    spin.fuse()
    spin.set_quantizers(a_bits=4, a_clip=0.9, kv_bits=4, kv_clip=0.95)
    with torch.no_grad():
        expected, got = ref(input_ids=IDS).logits, ours(input_ids=IDS).logits
        plain = _tiny_with_norms()(input_ids=IDS).logits
    assert torch.allclose(got, expected, atol=1e-4 * expected.abs().max())
    assert not torch.allclose(got, plain, atol=1e-2 * plain.abs().max())  # quantization is on


def test_optimisation_lowers_the_quantized_loss_and_keeps_rotations_orthogonal():
    m = _tiny_with_norms()
    spin = SpinModel(m, adapter_for(m), seed=0)
    spin.set_quantizers(a_bits=4, a_clip=0.9, kv_bits=4, kv_clip=0.95)
    g = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, 128, (4, 32), generator=g) for _ in range(2)]
    before = mean_quantized_loss(spin, batches, bits=2, device="cpu")
    result = optimize_rotations(spin, batches, bits=2, max_steps=30, time_budget=None, lr=1.5, device="cpu")
    after = mean_quantized_loss(spin, batches, bits=2, device="cpu")
    assert result.steps == 30 and after < before - 0.01
    for R in (spin.R1, *spin.R2s):
        assert (R.t() @ R - torch.eye(R.shape[0], dtype=R.dtype)).abs().max() < 1e-12


def test_entry_on_tiny_model_and_bad_options():
    ctx = tiny_ctx()
    opts = dict(bits=4, a_bits=4, kv_bits=4, weight_quant="gptq", max_steps=2, time_budget=0.0, lr=1.5,
                batch_size=2, a_clip=0.9, kv_clip=0.95, inject_outliers=0.0)
    out = run_spinquant(ctx, **opts)
    assert out["rotation_steps"] == 2 and out["rotation_orthogonality_error"] < 1e-12
    shapes = [lin.weight.shape for blk in ctx.adapter.blocks(ctx.model)
              for lin in ctx.adapter.linears(blk).values()]
    payload = sum(o * i * 4 + o * 16 for o, i in shapes)  # 4-bit codes + a 16-bit scale per row (symmetric)
    assert ctx.ledger.bits_per_weight() == pytest.approx(payload / sum(o * i for o, i in shapes))
    with pytest.raises(ValueError, match="--bits"):
        run_spinquant(tiny_ctx(), **{**opts, "bits": 1})
    with pytest.raises(ValueError, match="--max-steps"):
        run_spinquant(tiny_ctx(), **{**opts, "max_steps": -1})
    with pytest.raises(ValueError, match="Llama"):
        run_spinquant(tiny_ctx(arch="opt"), **opts)


@pytest.mark.slow
def test_spinquant_on_the_causal_model_with_injected_outliers():
    from reference_impls.common.runner import run_method

    opts = {"weight_quant": "rtn", "inject_outliers": 30.0, "max_steps": 4, "batch_size": 2}
    out = run_method("spinquant", options=opts, calib_samples=8, eval_windows=4)
    m = out["metrics"]
    assert m["outlier_channels_injected"] == 4 and m["rotation_steps"] == 4
    assert m["calib_loss_final"] < m["calib_loss_init"]
    assert m["perplexity"] < 1.3 * m["perplexity_fp"]
