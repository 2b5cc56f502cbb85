"""GQA conversion: mean-pooling by hand, an equivalent transform, the cache it saves, uptraining."""

import torch

from reference_impls.common import generation as G
from reference_impls.common.models import tiny_model
from reference_impls.common.training import TrainConfig, causal_lm_loss, cycle, train
from reference_impls.kv_cache.gqa_convert import convert_to_gqa, mean_pool_kv_heads


def test_mean_pool_by_hand():
    # 4 old heads of head_dim 1, in_features 2 → 2 new heads: means of rows (0, 1) and (2, 3)
    w = torch.tensor([[1.0, 0.0], [3.0, 2.0], [5.0, 5.0], [7.0, 1.0]])
    assert mean_pool_kv_heads(w, head_dim=1, kv_heads=2).tolist() == [[2.0, 1.0], [6.0, 3.0]]
    bias = torch.tensor([1.0, 2.0, 3.0, 6.0])
    assert mean_pool_kv_heads(bias, head_dim=2, kv_heads=1).tolist() == [2.0, 4.0]


def _ids():
    return torch.randint(1, 128, (2, 16), generator=torch.Generator().manual_seed(0))


def test_pooling_identical_heads_leaves_the_model_unchanged():
    """When the KV heads of a group are equal, their mean is each of them: the converted model (MQA) computes
    exactly what the original did. With distinct heads it does not."""
    model = tiny_model("llama")  # 4 query heads, 2 KV heads, head_dim 16
    d = model.config.hidden_size // model.config.num_attention_heads
    with torch.no_grad():
        for layer in model.model.layers:
            for proj in (layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.weight[d:] = proj.weight[:d]  # KV head 1 := KV head 0
        ref = model(input_ids=_ids()).logits
        convert_to_gqa(model, kv_heads=1)
        assert model.model.layers[0].self_attn.k_proj.weight.shape == (d, model.config.hidden_size)
        assert torch.allclose(model(input_ids=_ids()).logits, ref, atol=1e-5)
        other = tiny_model("llama")
        ref_other = other(input_ids=_ids()).logits
        pooled = convert_to_gqa(other, kv_heads=1)(input_ids=_ids()).logits
        assert not torch.allclose(pooled, ref_other, atol=1e-3)


def test_converted_cache_holds_half_the_bytes():
    model = tiny_model("llama")
    before = G.generate(model, _ids(), G.KeepAll(), max_new_tokens=4).bytes_peak
    convert_to_gqa(model, kv_heads=1)
    after = G.generate(model, _ids(), G.KeepAll(), max_new_tokens=4)
    assert before == G.full_cache_bytes(tiny_model("llama").config, tokens=19, batch=2)
    assert after.bytes_peak * 2 == before
    assert after.bytes_peak == G.full_cache_bytes(model.config, tokens=19, batch=2)


def test_uptraining_lowers_the_loss_of_the_converted_model():
    model = convert_to_gqa(tiny_model("llama"), kv_heads=1)
    batches = [{"input_ids": torch.randint(1, 128, (2, 32), generator=torch.Generator().manual_seed(i))}
               for i in range(2)]
    loss = causal_lm_loss(model)
    with torch.no_grad():
        start = sum(float(loss(b)) for b in batches)
    model.train()
    result = train(model.parameters(), loss, cycle(batches),
                   TrainConfig(max_steps=30, lr=3e-3, warmup_steps=2, progress=False, bf16=False))
    model.eval()
    with torch.no_grad():
        end = sum(float(loss(b)) for b in batches)
    assert end < start - 0.5 and result.losses[-1] < result.losses[0]
