"""KVQuant: hand-computed nuq codes, weighted k-means, pre-RoPE keys, the policy's encoding and bytes."""

import pytest
import torch

from reference_impls.common import generation as G
from reference_impls.common.kv_codes import minmax_codes, minmax_decode
from reference_impls.common.models import tiny_model
from reference_impls.kv_cache.kvquant import (
    KVQuantPolicy,
    LayerCalibration,
    kvquant_quantize,
    weighted_kmeans_1d,
)


def test_nuq_dense_and_sparse_by_hand():
    # thresholds ±2: offset 0, scale 2; z = 0 → −0.2 (nearer than 0.3), 0.75 → 1, −1.5 is an outlier, 1 → 1
    c = torch.tensor([-1.0, -0.2, 0.3, 1.0])
    x = torch.tensor([0.0, 1.5, -3.0, 2.0])
    out = kvquant_quantize(x, centroids=c, lower=torch.tensor(-2.0), upper=torch.tensor(2.0))
    assert torch.allclose(out, torch.tensor([-0.4, 2.0, -3.0, 2.0]))
    # an offset range: [1, 3] → offset 2, scale 1; 2.25 → z 0.25 → 0.3 → 2.3
    out = kvquant_quantize(torch.tensor([2.25]), centroids=c, lower=torch.tensor(1.0),
                           upper=torch.tensor(3.0))
    assert torch.allclose(out, torch.tensor([2.3]))


def test_weighted_kmeans_is_the_weighted_mean_per_cluster():
    x = torch.tensor([0.0, 1.0, 2.0, 10.0, 11.0])
    w = torch.tensor([1.0, 1.0, 2.0, 3.0, 1.0])
    assert torch.allclose(weighted_kmeans_1d(x, w, k=1), (w * x).sum() / w.sum())
    c = weighted_kmeans_1d(x, w, k=2)
    assert torch.allclose(c, torch.tensor([5.0 / 4.0, 41.0 / 4.0]))
    # the weights pull the centroid: the sensitive point dominates its cluster
    c = weighted_kmeans_1d(x, torch.tensor([1.0, 1.0, 100.0, 1.0, 1.0]), k=2)
    assert abs(float(c[0]) - 201 / 102) < 1e-5


def _rotary():
    model = tiny_model("llama")
    return model, G._rotary(model)


def test_unrotated_cache_keys_are_the_k_proj_outputs():
    """The policy un-rotates post-RoPE cache keys with their positions: that gives back k_proj's output."""
    model, rotary = _rotary()
    ids = torch.randint(1, 128, (2, 9), generator=torch.Generator().manual_seed(0))
    seen = []
    h = model.model.layers[0].self_attn.k_proj.register_forward_hook(lambda m, a, out: seen.append(out))
    cache = G.PolicyCache(model, G.KeepAll())
    with torch.no_grad():
        model(input_ids=ids, cache=cache, use_cache=True)
    h.remove()
    post = cache.layers[0].held["keys"]  # (2, kv_heads, 9, head_dim), after RoPE
    pre = seen[0].view(2, 9, post.shape[1], post.shape[3]).transpose(1, 2)
    policy = KVQuantPolicy([], rotary, bits=3, outlier_frac=0.01)
    assert not torch.allclose(post, pre, atol=1e-3)
    assert torch.allclose(policy._rope(post, 0, -1.0), pre, atol=1e-5)


def test_pre_rope_per_channel_beats_post_rope_on_an_outlier_channel():
    """KVQuant's point: an outlier channel that is steady before RoPE swings through ± its size in both
    channels of its rotary pair after RoPE, so per-channel ranges after RoPE are much wider."""
    _, rotary = _rotary()
    g = torch.Generator().manual_seed(0)
    pre = torch.randn(1, 2, 64, 16, generator=g)
    pre[..., 1] += 15.0  # a steady large channel (rotated with channel 9)
    policy = KVQuantPolicy([], rotary, bits=3, outlier_frac=0.01)
    post = policy._rope(pre, 0, 1.0)

    def per_channel(x):  # 3-bit min-max over all 64 tokens of each channel
        return minmax_decode(*minmax_codes(x.transpose(2, 3), bits=3, group_size=64)).transpose(2, 3)

    err_pre = (policy._rope(per_channel(pre), 0, 1.0) - post).pow(2).mean()
    err_post = (per_channel(post) - post).pow(2).mean()
    assert err_pre < 0.5 * err_post


def _policy(rotary, bits=2):
    g = torch.Generator().manual_seed(3)
    calib = [LayerCalibration(torch.linspace(-1, 1, 2**bits), torch.linspace(-0.9, 0.9, 2**bits),
                              -torch.rand(2, 1, 16, generator=g) - 1.5,
                              torch.rand(2, 1, 16, generator=g) + 1.5)
             for _ in range(2)]
    return KVQuantPolicy(calib, rotary, bits=bits, outlier_frac=0.05, n_sink=1)


def test_policy_decodes_to_the_core_and_streams_like_one_prefill():
    _, rotary = _rotary()
    policy = _policy(rotary)
    g = torch.Generator().manual_seed(4)
    keys, values = 1.2 * torch.randn(2, 2, 12, 16, generator=g), torch.randn(2, 2, 12, 16, generator=g)
    policy.select(1, keys, values, None)
    whole = policy.store(keys, values)
    k, v = policy.load(whole)
    c = policy.calib[1]
    assert torch.equal(k[:, :, 0], keys[:, :, 0]) and torch.equal(v[:, :, 0], values[:, :, 0])  # sink
    pre = policy._rope(keys[:, :, 1:], 1, -1.0)
    k_q = kvquant_quantize(pre, centroids=c.k_centroids, lower=c.k_lower, upper=c.k_upper)
    k_ref = policy._rope(k_q, 1, 1.0)
    assert torch.allclose(k[:, :, 1:], k_ref, atol=1e-5)
    assert (held_out := whole["k_out_idx"].numel()) > 0 and held_out < keys[:, :, 1:].numel() // 4
    # prefill of 5 then one token at a time through `append` holds the same thing
    held = policy.store(keys[:, :, :5], values[:, :, :5])
    for t in range(5, 12):
        held = policy.append(held, keys[:, :, : t + 1], values[:, :, : t + 1], n_new=1)
    for name, t in whole.items():
        assert torch.equal(held[name], t), name
    n_out = held["k_out_idx"].numel() + held["v_out_idx"].numel()
    codes = 2 * (2 * 2 * 11 * 16 * 2 // 8)  # keys and values, 2 bits
    sink = 2 * 2 * 2 * 16 * 4
    consts = (8 + 2 * 2 * 16) * 2  # two 4-centroid codebooks, per-channel thresholds, float16
    assert sum(t.numel() * t.element_size() for t in held.values()) == (
        codes + sink + consts + 2 * 2 * 11 * 2 + n_out * 6)  # + per-token value thresholds + outliers


@pytest.mark.slow
def test_kvquant_on_the_causal_lm():
    from reference_impls.common.runner import run_method

    rec = run_method("kvquant", eval_windows=1, calib_samples=4,
                     options={"bits": 3, "calib_seqs": 4, "windows": 1, "prefill": 24, "new_tokens": 16})
    m = rec["metrics"]
    assert m["kv_bytes_peak"] / m["kv_bytes_full"] < 0.2
    assert 0 < m["next_token_kl"] < 0.1 and m["perplexity_kv"] < 1.1 * m["perplexity_kv_full"]
