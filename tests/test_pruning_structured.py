"""Structured pruners on tiny random Llama models: invariances, choices, and that the result runs."""

from __future__ import annotations

import copy

import torch

from reference_impls.common.models import tiny_model
from reference_impls.pruning._structure import count_params
from reference_impls.pruning.shortgpt import (
    block_influence,
    layers_to_remove,
    model_block_influence,
    shortgpt_prune,
)
from reference_impls.pruning.slicegpt import fuse_norms, slicegpt_prune


def llama(seed=0, layers=2):
    model = tiny_model("llama", seed=seed)
    if layers != model.config.num_hidden_layers:
        import transformers as tf

        cfg = model.config
        cfg.num_hidden_layers = layers
        torch.manual_seed(seed)
        model = tf.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # random norms scales, so fusing them is not a no-op
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model


def batches(vocab=128, n=4, seq=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (2, seq), generator=g) for _ in range(n)]


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


def test_slicegpt_fusion_and_rotation_alone_leave_outputs_unchanged():
    model = llama()
    ids = batches()[0]
    ref = logits(model, ids)
    fused = copy.deepcopy(model)
    fuse_norms(fused)
    assert torch.allclose(logits(fused, ids), ref, atol=1e-4)
    rotated = copy.deepcopy(model)
    d = slicegpt_prune(rotated, batches(), sparsity=0.0)  # rotate by the PCA bases, delete nothing
    assert d == 64
    assert not torch.allclose(rotated.model.embed_tokens.weight, model.model.embed_tokens.weight, atol=1e-3)
    assert torch.allclose(logits(rotated, ids), ref, atol=1e-4)


def test_slicegpt_slicing_shrinks_and_still_generates():
    model = llama()
    dense = count_params(model)
    d = slicegpt_prune(model, batches(), sparsity=0.25)
    assert d == 48
    assert model.model.embed_tokens.weight.shape == (128, 48)
    assert model.model.layers[0].self_attn.q_proj.weight.shape[1] == 48
    assert model.model.layers[0].mlp.down_proj.weight.shape[0] == 48
    assert count_params(model) < dense
    out = model.generate(batches()[0][:1, :5], max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert out.shape == (1, 9)


def test_slicegpt_pca_beats_random_directions():
    """Slicing along principal directions must lose less than slicing the unrotated stream."""
    model = llama(seed=3)
    ids = batches(seed=5)[0]
    ref = logits(model, ids)
    pca = copy.deepcopy(model)
    slicegpt_prune(pca, batches(), sparsity=0.25)
    err_pca = float(((logits(pca, ids) - ref) ** 2).mean())
    naive = copy.deepcopy(model)  # delete the last 16 coordinates of the stream without rotating
    fuse_norms(naive)
    with torch.no_grad():
        naive.model.embed_tokens.weight[:, 48:] = 0
    err_naive = float(((logits(naive, ids) - ref) ** 2).mean())
    assert err_pca < err_naive


def test_block_influence_definition():
    x = torch.randn(10, 8)
    assert float(block_influence(x, x)) == 0.0 or abs(float(block_influence(x, x))) < 1e-12
    assert abs(float(block_influence(x, -x)) - 2.0) < 1e-12
    assert layers_to_remove(torch.tensor([0.3, 0.05, 0.2, 0.01]), 2) == [1, 3]


def test_shortgpt_removes_the_most_similar_layer():
    model = llama(seed=2, layers=4)
    with torch.no_grad():  # make layer 2 nearly the identity: its output almost equals its input
        model.model.layers[2].self_attn.o_proj.weight.mul_(1e-3)
        model.model.layers[2].mlp.down_proj.weight.mul_(1e-3)
    bi = model_block_influence(model, batches())
    assert int(torch.argmin(bi)) == 2
    ids = batches()[0]
    before = logits(model, ids)
    dense = count_params(model)
    assert shortgpt_prune(model, batches(), n_remove=1) == [2]
    assert model.config.num_hidden_layers == 3 and len(model.model.layers) == 3
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1, 2]
    assert count_params(model) < dense
    assert torch.allclose(logits(model, ids), before, atol=0.05)
    assert model.generate(ids[:1, :5], max_new_tokens=3, min_new_tokens=3, do_sample=False).shape == (1, 8)


def test_flap_bias_compensation_is_exact_for_constant_channels():
    from reference_impls.pruning.flap import compensated_bias, wifv

    g = torch.Generator().manual_seed(0)
    X = torch.randn(500, 12, generator=g)
    X[:, [2, 7]] = torch.tensor([3.0, -1.5])  # two channels that never fluctuate
    W = torch.randn(6, 12, generator=g)
    score = wifv(W, X.var(0))
    assert set(torch.argsort(score)[:2].tolist()) == {2, 7}  # the constant channels score zero
    keep = torch.ones(12, dtype=torch.bool)
    keep[[2, 7]] = False
    out = X[:, keep] @ W[:, keep].T + compensated_bias(W, X.mean(0), keep)
    assert torch.allclose(out, X @ W.T, atol=1e-5)


def test_flap_global_keep_meets_the_parameter_budget():
    from reference_impls.pruning.flap import global_keep

    g = torch.Generator().manual_seed(1)
    attn = [torch.randn(4, generator=g) for _ in range(3)]
    mlp = [torch.randn(50, generator=g) for _ in range(3)]
    a_keep, m_keep = global_keep(attn, mlp, group_cost=30, channel_cost=3, ratio=0.3)
    total = 3 * (4 * 30 + 50 * 3)
    kept = sum(int(k.sum()) * 30 for k in a_keep) + sum(int(k.sum()) * 3 for k in m_keep)
    assert abs(kept / total - 0.7) < 0.05
    assert all(k.any() for k in a_keep + m_keep)


def test_flap_layer_pruning_shrinks_and_runs():
    from reference_impls.pruning.flap import flap_prune_layer

    model = llama()
    ids = batches()[0]
    dense = count_params(model)
    layer = model.model.layers[1]
    flap_prune_layer(
        layer, torch.tensor([True, False]), torch.arange(160) % 4 != 0, torch.zeros(64), torch.zeros(160)
    )
    assert layer.self_attn.q_proj.out_features == 32 and layer.self_attn.k_proj.out_features == 16
    assert layer.mlp.down_proj.in_features == 120 and layer.mlp.down_proj.bias is not None
    assert count_params(model) < dense
    assert model.generate(ids[:1, :5], max_new_tokens=3, min_new_tokens=3, do_sample=False).shape == (1, 8)


def test_llm_pruner_removes_the_least_important_groups_and_recovers():
    from reference_impls.pruning.llm_pruner import (
        accumulate_gradients,
        llm_pruner_prune,
        lora_recover,
        taylor_group_importance,
    )

    model = llama(layers=3)
    data = [{"input_ids": b} for b in batches(n=4)]
    with torch.no_grad():  # channel 5 of layer 1 contributes nothing: its Taylor importance is zero
        model.model.layers[1].mlp.down_proj.weight[:, 5] = 0
        model.model.layers[1].mlp.up_proj.weight[5] = 0
        model.model.layers[1].mlp.gate_proj.weight[5] = 0
    accumulate_gradients(model, data)
    _, channel = taylor_group_importance(model.model.layers[1])
    assert int(torch.argmin(channel)) == 5 and float(channel[5]) == 0.0
    dense = count_params(model)
    llm_pruner_prune(model, data, ratio=0.5, skip_layers=1)
    mlp = model.model.layers[1].mlp
    assert mlp.up_proj.out_features == 80 and model.model.layers[0].mlp.up_proj.out_features == 160
    assert model.model.layers[1].self_attn.k_proj.out_features == 16
    assert not any(torch.equal(row, torch.zeros(64)) for row in mlp.up_proj.weight.data)  # channel 5 is gone
    assert count_params(model) < dense
    losses = lora_recover(model, data, steps=12, rank=4, lr=1e-2).losses
    assert losses[-1] < losses[0]
    assert all(isinstance(m, torch.nn.Linear) for m in (mlp.up_proj, model.model.layers[1].self_attn.q_proj))
    assert model.generate(
        data[0]["input_ids"][:1, :5], max_new_tokens=3, min_new_tokens=3, do_sample=False
    ).shape == (1, 8)
