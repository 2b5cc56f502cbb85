"""The KV-cache generation hook: a transformers Cache driven by a policy, and its measures."""

import pytest
import torch
import transformers as tf

from reference_impls.common import generation as G
from reference_impls.common.models import tiny_model
from reference_impls.kv_cache.streaming_llm import StreamingPolicy, streaming_keep


def _ids(batch=2, seq=12, seed=0):
    return torch.randint(1, 128, (batch, seq), generator=torch.Generator().manual_seed(seed))


def test_keep_all_reproduces_full_cache_generate_and_its_bytes():
    model = tiny_model("llama")
    ids = _ids()
    ref = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=20,
                         min_new_tokens=20, do_sample=False, pad_token_id=0)[:, ids.shape[1]:]
    out = G.generate(model, ids, G.KeepAll(), max_new_tokens=20)
    assert torch.equal(out.tokens, ref)
    cfg = model.config  # 2 layers, 2 KV heads, head_dim 16, float32
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    analytic = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * 4
    assert out.bytes_per_step[0] == analytic * 2 * 12  # after the prefill: batch 2 x 12 tokens
    assert out.bytes_final == analytic * 2 * (12 + 20 - 1)  # the last token is never fed back
    assert out.bytes_final == G.full_cache_bytes(cfg, tokens=12 + 19, batch=2)
    assert len(out.bytes_per_step) == 20


def test_budget_policy_keeps_bytes_bounded_over_four_times_the_budget():
    model = tiny_model("llama")
    budget = 8
    policy = StreamingPolicy(n_sink=2, n_recent=budget - 2)
    out = G.generate(model, _ids(seq=6), policy, max_new_tokens=4 * budget)
    assert out.bytes_peak == G.full_cache_bytes(model.config, tokens=budget, batch=2)
    assert out.bytes_per_step[-1] == out.bytes_peak  # full and stays full
    assert out.tokens.shape == (2, 4 * budget)


def test_streaming_keep_by_hand():
    assert streaming_keep(5, n_sink=2, n_recent=3).tolist() == [0, 1, 2, 3, 4]
    assert streaming_keep(9, n_sink=2, n_recent=3).tolist() == [0, 1, 6, 7, 8]
    assert streaming_keep(9, n_sink=0, n_recent=4).tolist() == [5, 6, 7, 8]


def test_policy_cache_agrees_with_teacher_forced_full_forward():
    model = tiny_model("llama")
    ids = _ids(seq=24)
    ref = G.teacher_forced_logprobs(model, ids, None, prefill=8)
    ours = G.teacher_forced_logprobs(model, ids, G.KeepAll(), prefill=8)
    assert torch.allclose(ours, ref, atol=1e-5)
    kl, _ = G.kl_and_perplexity(ref, ours, ids[:, 8:])
    assert abs(kl) < 1e-6


def _one_layer_llama():
    torch.manual_seed(0)
    cfg = tf.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=128, vocab_size=128)
    return tf.LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("shift", [True, False])
def test_streaming_position_shift_equals_a_fresh_run_on_the_kept_tokens(shift):
    """In a one-layer model keys and values depend only on the tokens and their positions, so the
    next-token distribution after eviction with pos-shift equals the model run afresh on the kept
    tokens (positions 0..n); without the shift it differs."""
    model = _one_layer_llama()
    ids = _ids(batch=1, seq=20)
    policy = StreamingPolicy(n_sink=2, n_recent=6, position_shift=shift)
    logp = G.teacher_forced_logprobs(model, ids, policy, prefill=10)  # evicts from the prefill on
    last = ids.shape[1] - 2  # the step that predicts the final token
    kept = streaming_keep(last, n_sink=2, n_recent=6)  # held after the previous step; the query comes on top
    fresh_ids = torch.cat([ids[:, kept], ids[:, last : last + 1]], 1)
    with torch.no_grad():
        fresh = torch.log_softmax(model(input_ids=fresh_ids).logits[:, -1].float(), -1)
    assert torch.allclose(logp[:, -1], fresh, atol=1e-4) == shift


def test_attention_policy_sees_softmax_weights_and_can_evict():
    seen = []

    class EvictOldest(G.KVPolicy):
        needs_attention = True

        def select(self, layer_idx, keys, values, attn):
            seen.append(attn.shape)
            assert torch.allclose(attn.sum(-1), torch.ones_like(attn.sum(-1)), atol=1e-5)
            n = keys.shape[2]
            return None if n <= 5 else torch.arange(n - 5, n).expand(keys.shape[0], keys.shape[1], -1)

    model = tiny_model("llama")
    out = G.generate(model, _ids(seq=8), EvictOldest(), max_new_tokens=6)
    assert seen[0] == (2, 4, 8, 8) and seen[-1] == (2, 4, 1, 6)
    assert out.bytes_peak == G.full_cache_bytes(model.config, tokens=5, batch=2)
    assert model.config._attn_implementation != G.ATTENTION_HOOK  # restored afterwards


def test_capture_attention_shapes():
    attn = G.capture_attention(tiny_model("llama"), _ids(batch=1, seq=7))
    assert len(attn) == 2 and attn[0].shape == (1, 4, 7, 7)
    assert torch.all(attn[0][0, :, 0, 1:] == 0)  # causal


@pytest.mark.slow
def test_streaming_llm_on_the_causal_lm():
    from reference_impls.common.runner import run_method

    rec = run_method("streaming-llm", eval_windows=2,
                     options={"budget": 32, "windows": 2, "prefill": 32, "new_tokens": 96})
    m = rec["metrics"]
    assert m["kv_bytes_peak"] == G.full_cache_bytes(rec_config(), tokens=32, batch=2)
    assert m["kv_bytes_full"] == G.full_cache_bytes(rec_config(), tokens=32 + 96 - 1, batch=2)
    assert 0 < m["next_token_kl"] < 1 and 0 <= m["token_match_rate"] < 1
    assert m["perplexity_kv"] > m["perplexity_kv_full"]  # eviction costs something


def rec_config():
    from reference_impls.common.models import CAUSAL_DIR

    return tf.AutoConfig.from_pretrained(CAUSAL_DIR)
