"""The bundled models: the committed split, the causal LM's architecture and size, and that it is a
trained language model (far below a unigram baseline, and far better on real code than on the same
tokens shuffled)."""

from __future__ import annotations

import math

import pytest
import torch

from reference_impls.common import corpus, data
from reference_impls.common.models import CAUSAL_DIR, load_model, tiny_model

pytestmark = pytest.mark.filterwarnings("ignore")
needs_model = pytest.mark.skipif(
    not (CAUSAL_DIR / "model.safetensors").exists(), reason="run `make model` first"
)


def test_split_lists_are_disjoint_and_cover_existing_modules():
    held = corpus._read_list(corpus.HELDOUT_LIST)
    calib = corpus._read_list(corpus.CALIBRATION_LIST)
    assert held and calib and not held & calib
    files = corpus.stdlib_files()
    units = {f.unit for f in files}
    assert held <= units and calib <= units
    parts = {p: {f.path for f in corpus.split_files(p, files)} for p in ("train", "calibration", "heldout")}
    assert not parts["train"] & parts["heldout"] and not parts["train"] & parts["calibration"]
    assert sum(map(len, parts.values())) == len(files)


def test_stdlib_listing_is_sorted_and_skips_tests():
    files = corpus.stdlib_files()
    paths = [str(f.path) for f in files]
    assert paths == sorted(paths)
    assert not any("/test/" in p or "/idle_test/" in p or "site-packages" in p for p in paths)


def test_tiny_models_are_built_in_memory():
    for arch in ("llama", "opt", "gpt2", "bert"):
        model = tiny_model(arch)
        assert sum(p.numel() for p in model.parameters()) < 1_000_000


@needs_model
def test_causal_model_architecture_and_size():
    loaded = load_model("causal")
    cfg = loaded.model.config
    assert cfg.model_type == "llama" and cfg.num_key_value_heads < cfg.num_attention_heads
    assert 5e6 <= sum(p.numel() for p in loaded.model.parameters()) <= 15e6
    assert 256 <= cfg.max_position_embeddings <= 512
    assert (CAUSAL_DIR / "model.safetensors").stat().st_size <= 30 * 2**20
    code = "def f(x):\n    return {'a': x ** 2}  # ünïcode\n"
    assert loaded.tokenizer.decode(loaded.tokenizer(code)["input_ids"]) == code


@needs_model
@pytest.mark.slow
def test_causal_model_is_a_trained_language_model():
    loaded = load_model("causal")
    windows = data.heldout_windows(loaded, max_windows=32)  # (32, 256)
    from reference_impls.common.evaluate import perplexity

    ppl = perplexity(loaded.model, windows)
    # Unigram baseline from the calibration split's token counts, scored on the same targets.
    counts = torch.bincount(data.token_stream(loaded.tokenizer, corpus.split_texts("calibration")),
                            minlength=loaded.model.config.vocab_size).double() + 1
    unigram = math.exp(-(counts / counts.sum()).log()[windows[:, 1:]].mean().item())
    assert ppl < unigram / 10, (ppl, unigram)
    # Same tokens, order destroyed within each window: a language model must find them far less likely.
    g = torch.Generator().manual_seed(0)
    shuffled = torch.stack([w[torch.randperm(w.numel(), generator=g)] for w in windows])
    assert perplexity(loaded.model, shuffled) > 5 * ppl


@needs_model
def test_token_stream_is_each_text_encoded_alone_then_end_of_text():
    loaded = load_model("causal")
    tok = loaded.tokenizer
    texts = corpus.split_texts("heldout")[:3] + ["", "x = 1\n"]
    expected = []
    for text in texts:  # the definition: one call per text, the end-of-text token after each
        expected += tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert data.token_stream(tok, texts).tolist() == expected
    assert data.token_stream(tok, []).numel() == 0
