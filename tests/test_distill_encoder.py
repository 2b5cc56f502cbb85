"""Encoder distillation (distilbert, tinybert, minilm) on a tiny random-init BERT teacher with the
sentence encoder's tokenizer, plus MiniLM's relations against transformers' own attention weights."""

import pytest
import torch

from reference_impls.common import registry
from reference_impls.common.adapters import adapter_for
from reference_impls.common.models import LoadedModel, encoder_path
from reference_impls.common.runner import RunContext
from reference_impls.distillation import _encoder
from reference_impls.distillation.minilm import LastLayerQKV, minilm_loss, relation, relation_kl
from reference_impls.distillation.tinybert import layer_map


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(encoder_path())


def _tiny_bert(vocab, seed=0, layers=4):
    import transformers as tf

    torch.manual_seed(seed)
    cfg = tf.BertConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                        num_attention_heads=4, max_position_embeddings=128, vocab_size=vocab)
    return tf.BertModel(cfg).eval()


def _ctx(tokenizer):
    teacher = _tiny_bert(len(tokenizer))
    loaded = LoadedModel("tiny", teacher, tokenizer, adapter_for(teacher), torch.device("cpu"))
    return RunContext(loaded=loaded, seed=0)


def _run(name, ctx, **opts):
    m = registry.get(name)
    return m.apply(ctx, **{**m.defaults(), "student_layers": 2, "max_steps": 3, "batch_size": 4, **opts})


def test_relation_with_teacher_heads_is_the_models_attention():
    model = _tiny_bert(128, layers=1)
    model.set_attn_implementation("eager")
    catch = LastLayerQKV(model)
    ids = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 6:] = 0
    with torch.no_grad():
        attn = model(input_ids=ids, attention_mask=mask, output_attentions=True).attentions[-1]
    q, k, _ = catch()
    got = relation(q, k, mask.bool(), 4).exp()  # (b, r, seq, seq)
    torch.testing.assert_close(got, attn, rtol=1e-4, atol=1e-6)


def test_minilm_loss_zero_iff_equal_and_any_head_count():
    g = torch.Generator().manual_seed(1)
    qkv_t = [torch.randn(2, 7, 64, generator=g) for _ in range(3)]
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[0, 5:] = False
    assert minilm_loss(qkv_t, qkv_t, mask, relation_heads=4).abs() < 1e-6
    qkv_s = [x + 0.3 * torch.randn(x.shape, generator=g) for x in qkv_t]
    for r in (1, 2, 4, 8):  # relation heads need not match either model's attention heads
        assert minilm_loss(qkv_s, qkv_t, mask, relation_heads=r) > 1e-4
    # padded keys and queries do not matter
    qkv_s2 = [x.clone() for x in qkv_s]
    for x in qkv_s2:
        x[0, 5:] = 100.0
    torch.testing.assert_close(minilm_loss(qkv_s2, qkv_t, mask, relation_heads=4),
                               minilm_loss(qkv_s, qkv_t, mask, relation_heads=4))
    log_t = relation(qkv_t[2], qkv_t[2], mask, 4)
    assert relation_kl(log_t, log_t, mask).abs() < 1e-6


def test_tinybert_uniform_layer_map():
    assert layer_map(2, 6) == [3, 6] and layer_map(3, 6) == [2, 4, 6] and layer_map(6, 6) == list(range(1, 7))
    with pytest.raises(ValueError, match="divisible"):
        layer_map(4, 6)


def test_student_heads_resplit_keeps_the_weights():
    teacher = _tiny_bert(128)
    s = _encoder.build_student(teacher, layers=[0, 3], student_heads=2)
    assert s.config.num_attention_heads == 2 and s.config.num_hidden_layers == 2
    torch.testing.assert_close(s.encoder.layer[1].attention.self.query.weight,
                               teacher.encoder.layer[3].attention.self.query.weight)


@pytest.mark.parametrize("name,opts", [("distilbert", {}), ("tinybert", {}),
                                       ("minilm", {"student_heads": 2})])
def test_encoder_method_trains_only_the_student(tokenizer, name, opts):
    ctx = _ctx(tokenizer)
    teacher = ctx.model
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    out = _run(name, ctx, **opts)
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())
    assert ctx.model is not teacher and ctx.model.config.num_hidden_layers == 2
    assert out["distill_steps"] == 3 and 0 < out["cosine_no_distill"] <= 1
    assert out["student_params"] < out["teacher_params"]
