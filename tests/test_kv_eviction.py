"""KV-cache eviction by attention: H2O, SnapKV, TOVA, PyramidKV (cores by hand, policies in generation,
and kvpress's presses on the same attention where kvpress is installed)."""

from types import SimpleNamespace

import pytest
import torch

from reference_impls.common import generation as G
from reference_impls.common.models import tiny_model
from reference_impls.kv_cache.h2o import H2OPolicy, h2o_keep
from reference_impls.kv_cache.pyramidkv import PyramidKVPolicy, pyramid_budgets
from reference_impls.kv_cache.snapkv import SnapKVPolicy, snapkv_keep, snapkv_votes
from reference_impls.kv_cache.tova import TOVAPolicy, tova_keep


def _ids(batch=2, seq=12, seed=0):
    return torch.randint(1, 128, (batch, seq), generator=torch.Generator().manual_seed(seed))


def _attn(b, h, q, k, seed=0):
    """Random causal softmax weights (batch, heads, q, k): the q rows are the last q of k positions."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, h, q, k, generator=g, dtype=torch.float64) * 2
    future = torch.arange(k) > torch.arange(k - q, k).unsqueeze(1)  # (q, k)
    return torch.softmax(logits.masked_fill(future, float("-inf")), -1)


# ---------------------------------------------------------------- policies in generation
POLICIES = {
    "h2o": lambda budget: H2OPolicy(n_heavy=budget // 2, n_recent=budget - budget // 2),
    "snapkv": lambda budget: SnapKVPolicy(budget=budget, window=4),
    "snapkv-decode": lambda budget: SnapKVPolicy(budget=budget, window=4, decode_evict=True),
    "tova": lambda budget: TOVAPolicy(budget=budget),
    "pyramidkv-decode": lambda budget: PyramidKVPolicy(n_layers=2, budget=budget, window=4,
                                                       decode_evict=True),
}


@pytest.mark.parametrize("name", POLICIES)
def test_budget_at_least_the_sequence_equals_full_attention(name):
    model = tiny_model("llama")
    ids = _ids(seq=12)
    full = G.generate(model, ids, G.KeepAll(), max_new_tokens=20)
    # the pyramid's smallest layer keeps (B − w) // 20 + w: B = 600 gives 33 ≥ 12 + 20 positions
    budget = 64 if name != "pyramidkv-decode" else 600
    ours = G.generate(model, ids, POLICIES[name](budget), max_new_tokens=20)
    assert torch.equal(ours.tokens, full.tokens)
    assert ours.bytes_per_step == full.bytes_per_step
    text = _ids(seq=30, seed=1)
    ref = G.teacher_forced_logprobs(model, text, G.KeepAll(), prefill=10)
    got = G.teacher_forced_logprobs(model, text, POLICIES[name](budget), prefill=10)
    assert torch.allclose(got, ref, atol=1e-5)


def _per_layer_bytes(model, tokens_per_layer, batch):
    return sum(G.full_cache_bytes(model.config, tokens=t, batch=batch) // model.config.num_hidden_layers
               for t in tokens_per_layer)


@pytest.mark.parametrize("name", ["h2o", "snapkv-decode", "tova", "pyramidkv-decode"])
def test_policies_that_evict_while_decoding_stay_bounded_over_four_times_the_budget(name):
    model = tiny_model("llama")
    budget = 12
    out = G.generate(model, _ids(seq=16), POLICIES[name](budget), max_new_tokens=4 * budget)
    layers = [budget] * 2
    if name == "pyramidkv-decode":  # min = 8 // 20 = 0, max = 16, step 16: prefixes 16 and 0, +4 window
        layers = [20, 4]
        assert pyramid_budgets(2, budget=12, window=4) == layers
    assert out.bytes_peak == _per_layer_bytes(model, layers, batch=2)
    assert out.bytes_per_step[0] == out.bytes_peak == out.bytes_per_step[-1]  # compressed from the prompt on
    assert out.tokens.shape == (2, 4 * budget)


def test_snapkv_compresses_the_prompt_only_so_the_cache_grows_while_decoding():
    model = tiny_model("llama")
    out = G.generate(model, _ids(seq=16), SnapKVPolicy(budget=12, window=4), max_new_tokens=10)
    assert out.bytes_per_step[0] == G.full_cache_bytes(model.config, tokens=12, batch=2)
    assert out.bytes_final == G.full_cache_bytes(model.config, tokens=12 + 9, batch=2)


# ---------------------------------------------------------------- H2O
def test_h2o_keep_by_hand_recent_window_removed_before_top_k():
    # one head, 3 query rows over 6 keys; column sums: 1.0, 0.2, 0.9, 0.3, 0.6, 1.0 (the rows need not be
    # causal for the core: it only sums columns)
    attn = torch.tensor([[[[0.5, 0.1, 0.2, 0.0, 0.1, 0.1],
                           [0.3, 0.0, 0.3, 0.1, 0.1, 0.2],
                           [0.2, 0.1, 0.4, 0.2, 0.4, 0.7]]]])
    # recent = {4, 5}; the heavy hitters are the top 2 of positions 0..3 (1.0 at 0, 0.9 at 2), although
    # position 5 (1.0) would outrank 2 if the window were not removed first
    assert h2o_keep(attn, n_heavy=2, n_recent=2).tolist() == [[[0, 2, 4, 5]]]
    assert h2o_keep(attn, n_heavy=1, n_recent=1).tolist() == [[[0, 5]]]
    assert h2o_keep(attn, n_heavy=4, n_recent=2).tolist() == [[[0, 1, 2, 3, 4, 5]]]  # T ≤ budget


def test_h2o_heavy_hitters_are_the_largest_accumulated_attention_over_decoding():
    """Against a naive bookkeeping of every key's attention summed over every step that saw it."""
    n_heavy, n_recent, prompt, steps = 3, 2, 8, 10
    policy = H2OPolicy(n_heavy=n_heavy, n_recent=n_recent)
    held = list(range(prompt))  # text positions our cache holds
    total = {}  # text position → attention accumulated while held
    attn = _attn(1, 2, prompt, prompt, seed=0).float()  # 2 query heads, 1 KV head: the group's mean
    for step in range(steps + 1):
        n = attn.shape[-1]
        positions = held if step == 0 else held + [prompt + step - 1]
        col = attn.mean(1)[0].sum(0)  # (n,)
        for i, pos in enumerate(positions):
            total[pos] = total.get(pos, 0.0) + float(col[i])
        keys = torch.zeros(1, 1, n, 4)
        keep = policy.select(0, keys, keys, attn)
        older, recent = positions[: len(positions) - n_recent], positions[len(positions) - n_recent :]
        expect = positions if len(positions) <= n_heavy + n_recent else sorted(
            sorted(older, key=lambda p: -total[p])[:n_heavy]) + recent
        held = positions if keep is None else [positions[i] for i in keep[0, 0].tolist()]
        assert held == expect
        attn = _attn(1, 2, 1, len(held) + 1, seed=step + 1).float()  # next step: held keys + the new one


# ---------------------------------------------------------------- SnapKV
def test_snapkv_votes_by_hand_average_pooling_with_zero_padding():
    window_attn = torch.tensor([[[[0.1, 0.0, 0.3, 0.0, 0.2], [0.2, 0.6, 0.0, 0.0, 0.1]]]])
    # votes 0.3, 0.6, 0.3, 0.0, 0.3; kernel 3, zero padding 1, divisor always 3
    expect = torch.tensor([0.9, 1.2, 0.9, 0.6, 0.3]) / 3
    assert torch.allclose(snapkv_votes(window_attn, kernel_size=3)[0, 0], expect)


def test_snapkv_keep_by_hand():
    # T = 7, window 2: prefix 0..4 voted on by rows 5 and 6 (the core does not need normalised rows)
    attn = torch.zeros(1, 1, 7, 7)
    attn[0, 0, 5] = torch.tensor([0.1, 0.0, 0.3, 0.0, 0.2, 0.4, 0.0])
    attn[0, 0, 6] = torch.tensor([0.2, 0.6, 0.05, 0.0, 0.3, 0.0, 0.0])
    # votes 0.3, 0.6, 0.35, 0.0, 0.5: without pooling the top 2 prefix positions are 1 and 4
    assert snapkv_keep(attn, budget=4, window=2, kernel_size=1).tolist() == [[[1, 4, 5, 6]]]
    # pooled over 3 (zero padding, /3): 0.3, 0.4167, 0.3167, 0.2833, 0.1667: 1 and 2 (4 loses its
    # neighbours)
    assert snapkv_keep(attn, budget=4, window=2, kernel_size=3).tolist() == [[[1, 2, 5, 6]]]
    assert snapkv_keep(attn, budget=3, window=2, kernel_size=3).tolist() == [[[1, 5, 6]]]
    assert snapkv_keep(attn, budget=8, window=2).tolist() == [[list(range(7))]]  # T < budget


def test_snapkv_with_pooling_width_one_is_top_k_of_the_window_votes():
    attn = _attn(2, 3, 20, 20, seed=3)
    window, budget = 6, 10
    votes = attn[..., -window:, : 20 - window].sum(-2)  # (2, 3, 14)
    top = votes.topk(budget - window, dim=-1).indices.sort(-1).values
    expect = torch.cat([top, torch.arange(14, 20).expand(2, 3, -1)], -1)
    assert torch.equal(snapkv_keep(attn, budget=budget, window=window, kernel_size=1), expect)


# ---------------------------------------------------------------- TOVA
def test_tova_keep_by_hand_last_row_averaged_over_heads():
    attn = torch.zeros(1, 2, 2, 5)
    attn[0, 0, -1] = torch.tensor([0.5, 0.1, 0.0, 0.2, 0.2])
    attn[0, 1, -1] = torch.tensor([0.0, 0.1, 0.6, 0.1, 0.2])
    attn[0, :, 0] = torch.tensor([0.0, 1.0, 0.0, 0.0, 0.0])  # earlier rows do not count
    # mean over heads: 0.25, 0.1, 0.3, 0.15, 0.2
    assert tova_keep(attn, budget=3).tolist() == [[[0, 2, 4]]]
    assert tova_keep(attn, budget=1).tolist() == [[[2]]]  # the newest key (4) may be evicted
    assert tova_keep(attn, budget=5).tolist() == [[[0, 1, 2, 3, 4]]]


# ---------------------------------------------------------------- PyramidKV
def test_pyramid_budgets_follow_the_official_integer_schedule():
    # B = 64, w = 32, T = 128: min = 32 // 20 = 1, max = 64 − 1 = 63, step = 62 // 5 = 12
    assert pyramid_budgets(6, budget=64, window=32, seq_len=128) == [95, 83, 71, 59, 47, 35]
    # T = 80: max = 63 ≥ T − w = 48, so max = 48, min = 64 − 48 = 16, step = 32 // 5 = 6
    assert pyramid_budgets(6, budget=64, window=32, seq_len=80) == [80, 74, 68, 62, 56, 50]
    assert pyramid_budgets(6, budget=64, window=32, seq_len=60) == [60] * 6  # T < B: kept whole
    assert pyramid_budgets(6, budget=128, window=32, seq_len=128) == [128] * 6  # T < 2(B − w): uniform
    # without the T clamp the per-layer prefixes average B − w (up to the floored step)
    assert pyramid_budgets(6, budget=128, window=32) == [220, 184, 148, 112, 76, 40]


def test_pyramidkv_layers_select_as_snapkv_with_their_own_budget():
    keys = torch.zeros(1, 1, 24, 4)
    attn = _attn(1, 2, 24, 24, seed=5).float()
    budgets = pyramid_budgets(2, budget=12, window=4, seq_len=24)
    for layer in range(2):
        keep = PyramidKVPolicy(n_layers=2, budget=12, window=4).select(layer, keys, keys, attn)
        expect = snapkv_keep(G.group_mean(attn, 1), budget=budgets[layer], window=4)
        assert torch.equal(keep, expect)


def test_group_mean_averages_consecutive_query_heads():
    attn = torch.arange(4.0).view(1, 4, 1, 1).expand(1, 4, 1, 3)
    assert G.group_mean(attn, 2)[0, :, 0, 0].tolist() == [0.5, 2.5]


# ---------------------------------------------------------------- kvpress on the same attention
def _module(heads, kv_heads, head_dim=4, layers=2, layer_idx=0):
    cfg = SimpleNamespace(num_attention_heads=heads, num_key_value_heads=kv_heads, num_hidden_layers=layers)
    return SimpleNamespace(config=cfg, head_dim=head_dim, layer_idx=layer_idx)


def _kvpress_kept(press, attn, kv_heads, n_keep):
    b, h, q, k = attn.shape
    keys = torch.zeros(b, kv_heads, k, 4)
    hidden = torch.zeros(b, q, 8)
    scores = press.score(_module(h, kv_heads), hidden, keys, keys, attn, {})
    return scores.topk(n_keep, dim=-1).indices.sort(-1).values


def test_snapkv_selects_what_kvpress_snapkvpress_selects():
    kvpress = pytest.importorskip("kvpress", reason="kvpress not installed (make install adds it)")
    attn = _attn(2, 8, 40, 40, seed=7).float()  # 8 query heads, 2 KV heads, as the causal LM
    for kernel in (1, 5):
        press = kvpress.SnapKVPress(window_size=8, kernel_size=kernel)
        ours = snapkv_keep(G.group_mean(attn, 2), budget=20, window=8, kernel_size=kernel)
        assert torch.equal(ours, _kvpress_kept(press, attn, 2, 20))


def test_tova_selects_what_kvpress_tovapress_selects():
    kvpress = pytest.importorskip("kvpress", reason="kvpress not installed (make install adds it)")
    attn = _attn(1, 8, 1, 30, seed=8).float()
    # kvpress always keeps the newest key; the official TOVA lets it compete. Make it win, so both agree.
    attn[..., -1] += 1.0
    attn = attn / attn.sum(-1, keepdim=True)
    ours = tova_keep(attn, budget=10).expand(-1, 2, -1)
    assert torch.equal(ours, _kvpress_kept(kvpress.TOVAPress(), attn, 2, 10))


def test_pyramidkv_layer_selection_matches_kvpress_pyramidkvpress_compress():
    """kvpress's own compress() on keys that carry their position, at our layer budget."""
    kvpress = pytest.importorskip("kvpress", reason="kvpress not installed (make install adds it)")
    attn = _attn(1, 8, 48, 48, seed=9).float()
    keys = torch.arange(48.0).view(1, 1, 48, 1).expand(1, 2, 48, 4).contiguous()
    press = kvpress.PyramidKVPress(compression_ratio=0.5, window_size=8)
    module = _module(8, 2, layers=6, layer_idx=3)
    n_kept = press.get_layer_budget(module, 48)  # kvpress's schedule (rounded, window inside)
    kept, _ = press.compress(module, torch.zeros(1, 48, 8), keys, keys, attn, {})
    theirs = kept[..., 0].long().sort(-1).values
    assert torch.equal(snapkv_keep(G.group_mean(attn, 2), budget=n_kept, window=8), theirs)


def test_h2o_score_is_observed_attention_without_its_normalisation():
    """kvpress's ObservedAttentionPress divides each key's summed attention by the number of queries
    that saw it; H2O (the official cache) does not, so it favours early keys."""
    kvpress = pytest.importorskip("kvpress", reason="kvpress not installed (make install adds it)")
    attn = _attn(1, 8, 16, 16, seed=10).float()
    keys = torch.zeros(1, 2, 16, 4)
    theirs = kvpress.ObservedAttentionPress().score(_module(8, 2), None, keys, keys, attn, {})
    h2o_score = G.group_mean(attn, 2).sum(-2)  # what h2o_keep ranks
    assert torch.allclose(h2o_score / torch.arange(16, 0, -1), theirs, atol=1e-6)
    ours = h2o_keep(G.group_mean(attn, 2), n_heavy=6, n_recent=0)
    assert ours[0, 0].tolist() == h2o_score[0, 0].topk(6).indices.sort().values.tolist()
    assert not torch.equal(ours, theirs.topk(6, -1).indices.sort(-1).values)
