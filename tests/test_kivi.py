"""KIVI: hand-computed prefill, the residual windows, the decoding rule against the prefill rule, and why
keys go per channel."""

import pytest
import torch

from reference_impls.common import generation as G
from reference_impls.kv_cache.kivi import KiviPolicy, kivi_quantize
from reference_impls.kv_cache.kv_int import kv_int_quantize


def test_kivi_prefill_by_hand():
    """bits 2, group 4, R 4, T 5: keys 0-3 quantized per channel, key 4 full; value 0 quantized per token."""
    keys = torch.zeros(1, 1, 5, 4)
    keys[0, 0, :4, 0] = torch.tensor([0.0, 1.0, 2.5, 3.0])  # scale 1, 2.5 → 2 (half to even)
    keys[0, 0, :4, 1] = -1.0  # constant channel: exact
    keys[0, 0, :4, 2] = torch.tensor([0.0, 0.3, 0.0, 0.9])  # scale 0.3: exact on the grid
    keys[0, 0, 4] = torch.tensor([0.77, -5.0, 3.3, 0.1])  # the residual token, full precision
    values = torch.zeros(1, 1, 5, 4)
    values[0, 0, 0] = torch.tensor([0.0, 0.5, 1.5, 3.0])  # per token: 0.5 → 0, 1.5 → 2
    values[0, 0, 1:] = torch.randn(4, 4)
    k, v = kivi_quantize(keys, values, bits=2, group_size=4, residual_length=4)
    assert k[0, 0, :4, 0].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert k[0, 0, :4, 1].tolist() == [-1.0] * 4
    assert torch.allclose(k[0, 0, :4, 2], torch.tensor([0.0, 0.3, 0.0, 0.9]))
    assert torch.equal(k[0, 0, 4], keys[0, 0, 4])
    assert v[0, 0, 0].tolist() == [0.0, 0.0, 2.0, 3.0]
    assert torch.equal(v[0, 0, 1:], values[0, 0, 1:])


@pytest.mark.parametrize("T", [5, 32, 40, 64, 100])
def test_full_precision_windows_stay_exact(T):
    g = torch.Generator().manual_seed(T)
    keys, values = torch.randn(2, 2, T, 32, generator=g), torch.randn(2, 2, T, 32, generator=g)
    k, v = kivi_quantize(keys, values, bits=2, group_size=16, residual_length=32)
    n_k, n_v = T - T % 32, max(T - 32, 0)
    assert torch.equal(k[:, :, n_k:], keys[:, :, n_k:]) and torch.equal(v[:, :, n_v:], values[:, :, n_v:])
    if n_k:  # and what is quantized is not exact at 2 bits
        assert not torch.allclose(k[:, :, :n_k], keys[:, :, :n_k])
    if n_v:
        assert not torch.allclose(v[:, :, :n_v], values[:, :, :n_v])


def test_per_channel_keys_beat_per_token_on_outlier_channels():
    """KIVI's observation (its Fig. 2): keys have fixed outlier channels; per-channel grouping isolates them,
    per-token grouping lets them set every token's scale. Same bits, same group size."""
    g = torch.Generator().manual_seed(0)
    keys = torch.randn(1, 2, 128, 32, generator=g)
    keys[..., [3, 17]] = keys[..., [3, 17]] * 8 + 20  # two outlier channels
    values = torch.randn(1, 2, 128, 32, generator=g)
    for bits in (2, 4):
        k_kivi, _ = kivi_quantize(keys, values, bits=bits, group_size=32, residual_length=32)
        k_tok = kv_int_quantize(keys, bits=bits, group_size=32, scale_dtype=torch.float32)
        assert (k_kivi - keys).pow(2).mean() < 0.25 * (k_tok - keys).pow(2).mean()


def test_decoding_rule_holds_what_the_prefill_rule_holds_at_every_step():
    """The official decode path (key window quantized when it reaches R, values beyond the last R quantized
    one at a time) through the real `append` hook: after prefill + each new token, the cache decodes to
    `kivi_quantize` of all tokens so far, and its windows have the official lengths."""
    g = torch.Generator().manual_seed(1)
    keys, values = torch.randn(1, 2, 90, 32, generator=g), torch.randn(1, 2, 90, 32, generator=g)
    policy = KiviPolicy(bits=2, group_size=8, residual_length=16, scale_dtype=torch.float32)
    held = policy.store(keys[:, :, :21], values[:, :, :21])  # prefill of 21: 16 keys, 5 values quantized
    for T in range(21, 91):
        if T > 21:
            old_k, old_v = policy.load(held)
            held = policy.append(held, torch.cat([old_k, keys[:, :, T - 1 : T]], 2),
                                 torch.cat([old_v, values[:, :, T - 1 : T]], 2), n_new=1)
        assert held["k_full"].shape[2] == T % 16 and held["v_full"].shape[2] == min(T, 16)
        k, v = policy.load(held)
        k_ref, v_ref = kivi_quantize(keys[:, :, :T], values[:, :, :T], bits=2, group_size=8,
                                     residual_length=16)
        assert torch.allclose(k, k_ref, atol=1e-6) and torch.allclose(v, v_ref, atol=1e-6)


def test_held_bytes_are_codes_scales_and_windows():
    policy = KiviPolicy(bits=2, group_size=32, residual_length=32)
    x = torch.randn(1, 2, 100, 32)
    held = policy.store(x, x)
    # keys: 96 quantized (2 bits, 2 heads · 32 channels · 3 groups of fp16 scale+min), 4 full (fp32)
    k_bytes = 2 * 32 * 96 * 2 // 8 + 2 * 32 * 3 * 4 + 2 * 4 * 32 * 4
    # values: 68 quantized (per token one group: fp16 scale+min), 32 full
    v_bytes = 2 * 68 * 32 * 2 // 8 + 2 * 68 * 4 + 2 * 32 * 32 * 4
    assert sum(t.numel() * t.element_size() for t in held.values()) == k_bytes + v_bytes
    assert held["k_codes"].dtype == torch.uint8 and held["k_scale"].dtype == torch.float16


@pytest.mark.slow
def test_kivi_on_the_causal_lm():
    from reference_impls.common.runner import run_method

    rec = run_method("kivi", eval_windows=1, options={"bits": 2, "residual_length": 32, "windows": 1,
                                                      "prefill": 24, "new_tokens": 16})
    m = rec["metrics"]

    def held(T):  # KIVI's bytes at T tokens, 6 layers, 2 heads, head_dim 32 (codes + fp16 pairs + windows)
        n_k, n_v = T - T % 32, max(T - 32, 0)
        per_head = (n_k * 32 * 2 // 8 + 32 * (n_k // 32) * 4 + (T - n_k) * 32 * 4
                    + n_v * 32 * 2 // 8 + n_v * 4 + (T - n_v) * 32 * 4)
        return 6 * 2 * per_head

    assert m["kv_bytes_peak"] == max(held(T) for T in range(24, 24 + 16))
    assert m["kv_bytes_full"] == G.full_cache_bytes(_config(), tokens=24 + 15)
    assert 0 < m["next_token_kl"] < 0.5


def _config():
    import transformers as tf

    from reference_impls.common.models import CAUSAL_DIR

    return tf.AutoConfig.from_pretrained(CAUSAL_DIR)
