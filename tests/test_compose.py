"""Compositions (`atlas run a+b`): option routing, the exact storage merge, GPTQ on a pruned model."""

import pytest
import torch

from reference_impls.common import compose, registry
from reference_impls.common.adapters import adapter_for
from reference_impls.common.models import LoadedModel, tiny_model
from reference_impls.common.runner import RunContext
from reference_impls.common.sparse_storage import best_encoding
from reference_impls.common.storage import Parts, StorageLedger, quantized_bits
from reference_impls.pruning.sparsegpt import sparsegpt_prune
from reference_impls.quantization.gptq import gptq
from reference_impls.quantization.rtn import rtn_quantize

registry.discover()


def _tiny_ctx(seed: int = 0) -> RunContext:
    model = tiny_model("llama", seed=seed)
    ctx = RunContext(loaded=LoadedModel("tiny", model, None, adapter_for(model), torch.device("cpu")))
    g = torch.Generator().manual_seed(seed)
    batches = [{"input_ids": torch.randint(0, 128, (2, 32), generator=g)} for _ in range(2)]
    ctx.__dict__["calibration"] = batches  # replaces the corpus draw
    return ctx


def test_options_route_to_stages_and_ambiguity_is_an_error():
    sg, gq = registry.get("sparsegpt"), registry.get("gptq")
    a, b = compose.split_options([sg, gq], {"sparsity": 0.6, "gptq.bits": 3, "sparsegpt.block_size": 64})
    assert (a["sparsity"], a["bits"], a["block_size"]) == (0.6, 0, 64)  # sparsegpt: no joint quantization
    assert (b["bits"], b["block_size"]) == (3, 128)
    with pytest.raises(ValueError, match=r"--bits is an option of several stages.*--gptq\.bits"):
        compose.split_options([sg, gq], {"bits": 4})
    with pytest.raises(ValueError, match="unknown option --awq.bits"):
        compose.split_options([sg, gq], {"awq.bits": 4})
    with pytest.raises(ValueError, match="unknown option"):
        compose.split_options([sg, gq], {"rank": 4})
    # one stage: unchanged behaviour
    assert compose.split_options([gq], {"bits": 3})[0]["bits"] == 3
    rec = compose.record_options([sg, gq], [a, b])
    assert rec["sparsity"] == 0.6 and rec["gptq.bits"] == 3 and rec["sparsegpt.bits"] == 0


def _sparse_entry(w):
    led = StorageLedger()
    led.add_sparse("w", w)
    return led.layers["w"], led.parts["w"]


def test_pruned_then_quantized_costs_indices_plus_quantized_kept_values():
    torch.manual_seed(0)
    w = torch.randn(16, 64)
    w[torch.rand_like(w) < 0.5] = 0
    (n, bits_sparse), p_sparse = _sparse_entry(w)
    enc = best_encoding(w)
    index_bits = enc.bits - enc.arrays["values"].nbytes * 8
    assert p_sparse == Parts(int((w != 0).sum()), 16, index_bits, 0)
    q = rtn_quantize(w, bits=4, group_size=32)  # an asymmetric grid holds 0 exactly: zeros stay zeros
    assert bool((q[w == 0] == 0).all())
    led = StorageLedger()
    led.add_quantized("w", 16, 64, bits=4, group_size=32)
    entry, _, rule = compose.merge_entry((n, bits_sparse), p_sparse, led.layers["w"], led.parts["w"], w, q)
    overhead = quantized_bits(16, 64, bits=4, group_size=32) - 16 * 64 * 4  # scales + zeros of every group
    assert rule == "sparse+quantized"
    assert entry == (16 * 64, index_bits + int((w != 0).sum()) * 4 + overhead)
    assert entry[1] < min(bits_sparse, led.layers["w"][1])  # cheaper than either stage alone, not the sum
    # a quantizer that fills the pruned weights in is charged its dense cost
    filled = q.clone()
    filled[w == 0] = 0.01
    _, _, rule = compose.merge_entry((n, bits_sparse), p_sparse, led.layers["w"], led.parts["w"], w, filled)
    assert rule == "replaced (zeros filled in)"


def test_quantized_then_pruned_keeps_the_grid_only_when_values_are_untouched():
    torch.manual_seed(1)
    q = rtn_quantize(torch.randn(16, 64), bits=4, group_size=32)
    led_q = StorageLedger()
    led_q.add_quantized("w", 16, 64, bits=4, group_size=32)
    masked = q * (q.abs() > q.abs().median())  # a masking pruner (Wanda-like) keeps values on the grid
    (n, b), p = _sparse_entry(masked)
    entry, parts, rule = compose.merge_entry(led_q.layers["w"], led_q.parts["w"], (n, b), p, q, masked)
    assert rule == "quantized+sparse" and parts.value_bits == 4 and parts.n_values == int((masked != 0).sum())
    assert entry[1] == p.index_bits + parts.n_values * 4 + led_q.parts["w"].extra_bits
    moved = masked * 1.01  # an updating pruner (SparseGPT) moves kept values off the grid
    (n, b), p = _sparse_entry(moved)
    entry, _, rule = compose.merge_entry(led_q.layers["w"], led_q.parts["w"], (n, b), p, q, moved)
    assert rule == "replaced (values left the grid)" and entry[1] == b


def test_gptq_with_sparsegpt_mask_reproduces_sparsegpt_joint_quantization():
    """SparseGPT's joint step is GPTQ's with the mask fixed: given the mask SparseGPT chose, GPTQ must
    give the same weights (up to float rounding of a few grid steps)."""
    torch.manual_seed(2)
    x = torch.randn(512, 64) * torch.linspace(0.2, 3, 64)
    H = 2 / 512 * x.t() @ x
    W = torch.randn(32, 64)
    joint = sparsegpt_prune(W, H, sparsity=0.5, bits=4, block_size=64)
    res = gptq(W, H, bits=4, block_size=64, pruned=joint == 0)
    assert bool((res.weight[joint == 0] == 0).all())
    same = (res.weight - joint).abs() < 1e-4
    assert same.float().mean() > 0.98
    plain = gptq(W, H, bits=4, block_size=64).weight
    assert (plain == 0).float().mean() < 0.2  # without the mask GPTQ fills the zeros back in


def test_sparsegpt_then_gptq_on_a_model_keeps_sparsity_and_merges_the_ledger():
    ctx = _tiny_ctx()
    methods = [registry.get("sparsegpt"), registry.get("gptq")]
    kwargs = compose.split_options(methods, {"sparsity": 0.5, "gptq.bits": 4, "gptq.group_size": 32})
    _, stages = compose.apply_stages(ctx, methods, kwargs)
    assert [s["method"] for s in stages] == ["sparsegpt", "gptq"]
    n_linears = len(ctx.ledger.layers)
    assert stages[1]["ledger_merge"] == {"sparse+quantized": n_linears}
    for name, parts in ctx.ledger.parts.items():
        w = compose._weight(ctx.model, name)
        assert (w == 0).float().mean() >= 0.5  # GPTQ kept SparseGPT's zeros
        assert parts.value_bits == 4 and parts.index_bits > 0
    # 50% bitmask (1 bit/weight) + half the weights at 4 bits + group scales/zeros: about 3.2 bits
    assert 3.0 < ctx.ledger.bits_per_weight() < stages[0]["bits_per_weight"]
