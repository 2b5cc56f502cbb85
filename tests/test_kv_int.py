"""kv-int (per-token INT-b cache) and the shared code packing: hand cases, hqq, the cache hook."""

import pytest
import torch

from reference_impls.common import generation as G
from reference_impls.common.kv_codes import minmax_codes, minmax_decode, pack_codes, unpack_codes
from reference_impls.common.models import tiny_model
from reference_impls.kv_cache.kv_int import PerTokenPolicy, kv_int_quantize


def test_pack_codes_by_hand():
    # 2-bit codes 1, 2, 3, 0 → 1 + 2·4 + 3·16 + 0·64 = 57 (least significant bits first)
    assert pack_codes(torch.tensor([1, 2, 3, 0], dtype=torch.uint8), 2).tolist() == [57]
    # 4-bit 0xA, 0x3 → 0x3A; 3-bit codes straddle bytes: 5, 7, 1 = 101 111 100 (LSB first) → 0b01_111_101
    assert pack_codes(torch.tensor([10, 3], dtype=torch.uint8), 4).tolist() == [0x3A]
    assert pack_codes(torch.tensor([5, 7, 1], dtype=torch.uint8), 3).tolist() == [0b01111101, 0]


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 8])
def test_pack_round_trip_and_size(bits):
    codes = torch.randint(0, 2**bits, (2, 3, 5, 32), generator=torch.Generator().manual_seed(bits))
    packed = pack_codes(codes.to(torch.uint8), bits)
    assert packed.dtype == torch.uint8 and packed.shape[-1] == (32 * bits + 7) // 8
    assert torch.equal(unpack_codes(packed, bits, 32), codes.to(torch.uint8))


def test_minmax_by_hand():
    # one group of 4, 2 bits: min 0, max 3, scale 1; 2.5 rounds half to even → 2, 0.5 → 0
    x = torch.tensor([[0.0, 2.5, 0.5, 3.0]])
    codes, scale, lo = minmax_codes(x, bits=2, group_size=4, scale_dtype=torch.float32)
    assert codes.tolist() == [[0, 2, 0, 3]] and scale.tolist() == [[1.0]] and lo.tolist() == [[0.0]]
    assert minmax_decode(codes, scale, lo).tolist() == [[0.0, 2.0, 0.0, 3.0]]
    const = minmax_decode(*minmax_codes(torch.full((1, 4), -1.5), bits=2, group_size=4))
    assert torch.equal(const, torch.full((1, 4), -1.5))  # a constant group is exact (scale 0)


def test_per_token_quantizer_agrees_with_hqq_min_max():
    """hqq's Quantizer without its optimisation is asymmetric min-max on groups along axis 1 (it multiplies
    by the inverse scale, so a few values on a rounding boundary may land one step away)."""
    from hqq.core.quantize import Quantizer

    x = torch.randn(1, 2, 64, 32, generator=torch.Generator().manual_seed(0))
    for bits, group in [(4, 32), (2, 16), (8, 32)]:
        q, meta = Quantizer.quantize(x.reshape(-1, 32), nbits=bits, group_size=group, optimize=False,
                                     axis=1, bitpack=False, device="cpu", compute_dtype=torch.float32)
        ref = Quantizer.dequantize(q, meta).reshape(x.shape).float()
        ours = kv_int_quantize(x, bits=bits, group_size=group, scale_dtype=torch.float32)
        step = (x.reshape(-1, group).amax(-1) - x.reshape(-1, group).amin(-1)).max() / (2**bits - 1)
        close = (ours - ref).abs() < 1e-4
        assert close.float().mean() > 0.995 and (ours - ref).abs().max() <= step * 1.001


def test_per_token_beats_nothing_and_more_bits_is_better():
    x = torch.randn(1, 2, 40, 32, generator=torch.Generator().manual_seed(1))
    errs = [float((kv_int_quantize(x, bits=b) - x).pow(2).mean()) for b in (2, 4, 8)]
    assert errs[0] > errs[1] > errs[2] and errs[2] < 1e-4 * float(x.pow(2).mean())


def test_policy_holds_packed_codes_and_decodes_like_the_core():
    """Through the real cache: after generation the held codes decode to the per-token core applied to
    the keys a full cache holds, and the bytes are codes + two float16 numbers per token and head."""
    model = tiny_model("llama")  # 2 layers, 2 KV heads, head_dim 16
    ids = torch.randint(1, 128, (1, 10), generator=torch.Generator().manual_seed(0))
    full, ours = G.PolicyCache(model, G.KeepAll()), G.PolicyCache(model, PerTokenPolicy(bits=4))
    with torch.no_grad():
        for cache in (full, ours):
            model(input_ids=ids[:, :6], cache=cache, use_cache=True)
            for t in range(6, 10):  # decoding steps go through `append`
                model(input_ids=ids[:, t : t + 1], cache=cache, use_cache=True)
    # decoded keys attend from step 7 on, so from there the two caches see different inputs: compare layer 0's
    # first 6 tokens (computed from the prompt alone in both)
    k_ref = full.layers[0].held["keys"][:, :, :6]
    k_ours, _ = ours.policy.load(ours.layers[0].held)
    assert torch.allclose(k_ours[:, :, :6], kv_int_quantize(k_ref, bits=4), atol=1e-6)
    per_token = 16 * 4 // 8 + 2 * 2  # packed codes + float16 scale + float16 minimum
    assert ours.nbytes() == 2 * 2 * 2 * 10 * per_token  # layers · (k, v) · heads · tokens


def test_append_hook_sees_old_keys_then_the_new_token():
    calls = []

    class Spy(G.KVPolicy):
        def store(self, keys, values):
            calls.append(("store", keys.shape[2]))
            return super().store(keys, values)

        def append(self, held, keys, values, *, n_new):
            assert torch.equal(keys[:, :, :-n_new], held["keys"])
            calls.append(("append", keys.shape[2], n_new))
            return {"keys": keys, "values": values}

    model = tiny_model("llama")
    G.generate(model, torch.randint(1, 128, (1, 5)), Spy(), max_new_tokens=3)
    assert calls[:2] == [("store", 5), ("store", 5)]  # the prefill, both layers
    assert calls[2:] == [("append", 6, 1)] * 2 + [("append", 7, 1)] * 2


@pytest.mark.slow
def test_kv_int_on_the_causal_lm():
    from reference_impls.common.runner import run_method

    rec = run_method("kv-int", eval_windows=1,
                     options={"bits": 4, "windows": 1, "prefill": 24, "new_tokens": 16})
    m = rec["metrics"]
    # per token and head: 32 4-bit codes + a float16 scale and minimum, against 32 float32 numbers
    assert m["kv_bytes_peak"] / m["kv_bytes_full"] == pytest.approx((16 + 4) / 128)
    assert 0 < m["next_token_kl"] < 0.05 and m["token_match_rate"] > 0
    assert m["perplexity_kv"] < 1.05 * m["perplexity_kv_full"]
