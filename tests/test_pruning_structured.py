"""Structured pruners on tiny random Llama models: invariances, choices, and that the result runs."""

from __future__ import annotations

import copy

import torch

from reference_impls.common.models import tiny_model
from reference_impls.pruning.shortgpt import (
    block_influence,
    layers_to_remove,
    model_block_influence,
    shortgpt_prune,
)
from reference_impls.pruning.slicegpt import fuse_norms, slicegpt_prune
from reference_impls.pruning.structure import count_params


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
