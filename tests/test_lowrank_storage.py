"""Storage of low-rank factors: the rank DESIGN §6's --ratio gives, and the bits the ledger records."""

import pytest

from reference_impls.common.storage import StorageLedger, low_rank_bits, rank_for_ratio


def test_rank_for_ratio_is_the_official_truncation():
    # SVD-LLM / ASVD: int(m·n·r / (m+n)); 256x768 at r=0.5 -> 196608·0.5/1024 = 96
    assert rank_for_ratio(256, 768, 0.5) == 96
    assert rank_for_ratio(64, 256, 0.8) == int(64 * 256 * 0.8 / 320) == 40
    # the factors then keep at most `ratio` of the parameters
    for m, n, r in [(256, 256, 0.3), (768, 256, 0.9), (7, 5, 0.6)]:
        k = rank_for_ratio(m, n, r)
        assert k * (m + n) <= r * m * n < (k + 1) * (m + n)
    for bad in (0, -0.1, 1.5):
        with pytest.raises(ValueError, match="--ratio"):
            rank_for_ratio(8, 8, bad)


def test_ledger_low_rank_entry():
    led = StorageLedger()
    led.add_low_rank("a", 256, 768, rank=96)
    assert led.layers["a"] == (256 * 768, 96 * 1024 * 16)
    assert led.bits_per_weight() == pytest.approx(16 * 96 * 1024 / (256 * 768))  # = 16·ratio = 8
    led.add_low_rank("b", 10, 20, rank=2, bits=8, extra_bits=10 * 20 * 4)  # 8-bit factors on a 4-bit base
    assert led.layers["b"][1] == 2 * 30 * 8 + 800 == low_rank_bits(10, 20, rank=2, bits=8) + 800
