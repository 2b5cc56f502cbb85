"""Arithmetic coding with a predictor (Language Modeling Is Compression): exact decode, size within 1%
of the cross-entropy, and the LM predictor's probabilities equal to a full forward pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reference_impls.encoding.lm_compressor import (
    LMPredictor,
    arithmetic_decode,
    arithmetic_encode,
    baseline_bits_per_byte,
)


class BigramPredictor:
    """A known source: p(x_t | x_{t-1}) from a fixed table, p(x_0) uniform."""

    def __init__(self, table: np.ndarray):
        self.table = table

    def reset(self) -> np.ndarray:
        return np.full(self.table.shape[0], 1.0 / self.table.shape[0])

    def step(self, token: int) -> np.ndarray:
        return self.table[token]


def sample(table: np.ndarray, n: int, rng) -> list[int]:
    out = [int(rng.integers(table.shape[0]))]
    for _ in range(n - 1):
        out.append(int(rng.choice(table.shape[0], p=table[out[-1]])))
    return out


def test_exact_decode_and_size_within_one_percent_of_cross_entropy():
    rng = np.random.default_rng(0)
    table = rng.dirichlet(np.full(40, 0.3), size=40)  # peaked rows: ~3 bits per symbol
    tokens = sample(table, 5000, rng)
    words, ce = arithmetic_encode(tokens, BigramPredictor(table), segment=1000)
    # the cross-entropy, computed here independently of the coder
    pairs = zip(tokens, tokens[1:], strict=False)
    ref = -np.log2(1 / 40) * 5 - sum(np.log2(table[a, b]) for i, (a, b) in enumerate(pairs) if (i + 1) % 1000)
    assert ce == pytest.approx(ref, rel=1e-9)
    bits = words.size * 32
    assert ce <= bits + 1 and bits <= 1.01 * ce
    assert arithmetic_decode(words, len(tokens), BigramPredictor(table), segment=1000) == tokens
    # a predictor that knows nothing codes at log2(V) bits per symbol: the model is what compresses
    uniform = BigramPredictor(np.full((40, 40), 1 / 40))
    assert arithmetic_encode(tokens, uniform, segment=1000)[0].size * 32 >= 5000 * np.log2(40) > 1.2 * bits


def test_lm_predictor_is_the_model_and_round_trips():
    from reference_impls.common.models import tiny_model

    model = tiny_model("llama").eval()  # vocab 128, context 64
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(1, 128, (40,), generator=g).tolist()
    pred = LMPredictor(model, bos=0)
    # p(x_t | x_<t) token by token == the softmax of one full forward pass over [bos] + tokens
    with torch.no_grad():
        full = torch.softmax(model(input_ids=torch.tensor([[0] + tokens])).logits[0].double(), -1)
    inc = [pred.reset()] + [pred.step(t) for t in tokens[:10]]
    np.testing.assert_allclose(np.stack(inc), full[:11].numpy(), rtol=1e-4, atol=1e-7)
    words, ce = arithmetic_encode(tokens, LMPredictor(model, bos=0), segment=16)
    assert arithmetic_decode(words, len(tokens), LMPredictor(model, bos=0), segment=16) == tokens
    assert ce <= words.size * 32 <= ce + 64


def test_baselines_are_real_compressors():
    data = b"def f(x):\n    return x + 1\n" * 200
    rates = baseline_bits_per_byte(data)
    assert set(rates) == {"gzip_bits_per_byte", "xz_bits_per_byte", "zstd_bits_per_byte"}
    assert all(0 < r < 1 for r in rates.values())  # a repetitive text compresses well below 8 bits
