"""AWQ: alpha = 0 without clipping is RTN; the search never loses to alpha = 0; salient channels win."""

import pytest
import torch

from reference_impls.common.adapters import adapter_for
from reference_impls.common.folding import fold_is_equivalent, fold_scales
from reference_impls.common.layerwise import walk_blocks
from reference_impls.common.models import tiny_model
from reference_impls.quantization.awq import (
    apply_clip,
    awq_block,
    awq_clip_search,
    awq_quantize,
    awq_scales,
    awq_search_scale,
    rtn_quantizer,
)
from reference_impls.quantization.rtn import rtn_quantize


def salient_inputs(seed, n=512, d=256, k=8, factor=20.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    cols = torch.randperm(d, generator=g)[:k]
    x[:, cols] *= factor  # a few input channels with much larger activations, as in LLMs
    return x


def test_alpha_zero_without_clipping_is_rtn():
    g = torch.Generator().manual_seed(0)
    w, x = torch.randn(64, 256, generator=g), salient_inputs(1)
    for bits in (3, 4):
        got = awq_quantize(w, x, bits=bits, group_size=128, alpha=0.0, clip=False)
        assert torch.equal(got, rtn_quantize(w, bits=bits, group_size=128))


def test_scale_normalisation():
    act = torch.tensor([0.5, 2.0, 8.0])
    s = awq_scales(act, 0.5)
    # sqrt(act) = [0.707, 1.414, 2.828], divided by sqrt(max·min) = sqrt(2)
    assert torch.allclose(s, torch.tensor([0.5, 1.0, 2.0]))
    assert torch.equal(awq_scales(act, 0.0), torch.ones(3))


def test_search_never_worse_than_alpha_zero():
    g = torch.Generator().manual_seed(2)
    w, x = torch.randn(64, 256, generator=g), salient_inputs(3)
    quantize = rtn_quantizer(bits=3, group_size=128)
    ref = x @ w.T

    def block_error(ws):
        return (x @ ws[0].T - ref).pow(2).mean().item()

    r = awq_search_scale([w], x.abs().mean(0), block_error, quantize=quantize, n_grid=20)
    assert len(r.errors) == 20
    assert r.errors[int(round(r.alpha * 20))] == min(r.errors) <= r.errors[0]
    assert r.alpha > 0  # with salient channels some protection pays
    assert block_error([quantize(w * r.scales) / r.scales]) == pytest.approx(min(r.errors))


@pytest.mark.parametrize("bits", [3, 4])
def test_awq_beats_rtn_on_salient_channels(bits):
    g = torch.Generator().manual_seed(4)
    w, x = torch.randn(128, 256, generator=g), salient_inputs(5)
    ref = x @ w.T
    err = {
        name: ((x @ q.T - ref).pow(2).mean()).item()
        for name, q in {
            "rtn": rtn_quantize(w, bits=bits, group_size=128),
            "awq_noclip": awq_quantize(w, x, bits=bits, group_size=128, clip=False),
            "awq": awq_quantize(w, x, bits=bits, group_size=128),
        }.items()
    }
    assert err["awq_noclip"] < 0.8 * err["rtn"]
    assert err["awq"] <= err["awq_noclip"] * 1.001


def test_clip_search_never_worse_than_no_clip_per_group():
    g = torch.Generator().manual_seed(6)
    w = torch.randn(32, 256, generator=g)
    w[:, 7] *= 8  # outlier weights make clipping worthwhile
    x = torch.randn(300, 256, generator=g)
    quantize = rtn_quantizer(bits=3, group_size=64)
    max_val = awq_clip_search(w, x, quantize=quantize, group_size=64)
    assert max_val.shape == (32, 4)
    org_max = w.abs().reshape(32, 4, 64).amax(-1)
    assert (max_val <= org_max + 1e-6).all() and (max_val >= 0.5 * org_max - 1e-6).all()
    assert (max_val < org_max - 1e-6).any()  # it does clip somewhere

    def group_err(q):  # (out, groups): Σ over tokens of each group's partial output error
        d = (w - q).reshape(32, 4, 64)
        return torch.einsum("tgk,ogk->otg", x.reshape(-1, 4, 64), d).pow(2).mean(1)

    clipped = group_err(quantize(apply_clip(w, max_val, 64)))
    assert (clipped <= group_err(quantize(w)) * (1 + 1e-5)).all()


def _inject(model, channels, factor):
    with torch.no_grad():
        for layer in model.model.layers:
            layer.input_layernorm.weight[channels] *= factor
            for p in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                p.weight[:, channels] /= factor


def test_fold_is_an_equivalent_transform_on_tiny_llama():
    model = tiny_model("llama")
    batches = [{"input_ids": torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0))}]
    ref = model(**batches[0]).logits.detach()
    adapter = adapter_for(model)

    def process(b):
        for group in adapter.input_groups:
            if group.prev is not None and group.prev != "self_attn.v_proj":  # v->o does not fit GQA
                n_in = b.weight(group.linears[0]).shape[1]
                fold_scales(b, group, torch.rand(n_in, generator=torch.Generator().manual_seed(1)) + 0.5)

    walk_blocks(model, adapter, batches, process, stats=())
    assert torch.allclose(model(**batches[0]).logits, ref, atol=1e-4, rtol=1e-4)


def test_fold_check_rejects_post_ln_norms():
    seen = {}

    def process(b):
        if b.index == 0:
            seen.update({g.prev: fold_is_equivalent(b, g) for g in b.adapter.input_groups if g.prev})

    for arch in ("llama", "bert"):
        model = tiny_model(arch)
        walk_blocks(
            model, adapter_for(model), [{"input_ids": torch.randint(0, 128, (2, 16))}], process, stats=()
        )
    # pre-LN Llama: norms feed only their linears; GQA's v_proj rows do not match o_proj's inputs
    assert seen["input_layernorm"] and seen["post_attention_layernorm"] and seen["mlp.up_proj"]
    assert not seen["self_attn.v_proj"]
    # post-LN BERT: the attention output LayerNorm also feeds the residual, so it cannot absorb scales
    assert not seen["attention.output.LayerNorm"] and seen["attention.self.value"]


def test_awq_block_beats_rtn_on_tiny_llama_with_salient_channels():
    batches = [
        {"input_ids": torch.randint(0, 128, (4, 32), generator=torch.Generator().manual_seed(i))}
        for i in range(2)
    ]

    def run(method):
        model = tiny_model("llama")
        _inject(model, [5, 9, 30], 10.0)
        ref = model(**batches[0]).logits.detach()
        adapter = adapter_for(model)
        if method == "rtn":

            def process(b):
                for n in b.linears:
                    b.set_weight(n, rtn_quantize(b.weight(n), bits=3, group_size=32))
        else:

            def process(b):
                awq_block(b, bits=3, group_size=32, sym=False, n_grid=20, clip=True, search_samples=8)

        walk_blocks(model, adapter, batches, process, stats=("act_mean_abs",))
        with torch.no_grad():
            return (model(**batches[0]).logits - ref).pow(2).mean().item()

    assert run("awq") < 0.8 * run("rtn")


@pytest.mark.slow
def test_awq_3bit_perplexity_below_rtn_on_the_causal_lm():
    from reference_impls.common.models import CAUSAL_DIR
    from reference_impls.common.runner import run_method

    if not (CAUSAL_DIR / "model.safetensors").exists():
        pytest.skip("the causal LM is not trained in this checkout")
    common = dict(model="causal", eval_windows=24, calib_samples=16)
    awq = run_method("awq", options={"bits": 3, "group_size": 128, "search_samples": 16}, **common)
    rtn = run_method("rtn", options={"bits": 3, "group_size": 128}, **common)
    assert awq["metrics"]["perplexity"] < rtn["metrics"]["perplexity"]
    assert awq["bits_per_weight"] == rtn["bits_per_weight"]  # same grid, same storage
