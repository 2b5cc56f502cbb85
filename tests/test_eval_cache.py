"""The evaluation: per-window NLL against a float64 transcription, the hidden-state shortcut against the
model's own logits, and the on-disk reference cache (hit, miss on every key, damaged files rebuilt)."""

from __future__ import annotations

import math

import pytest
import torch

from reference_impls.common import eval_cache, evaluate
from reference_impls.common.models import tiny_model


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("ATLAS_CACHE", str(tmp_path))
    monkeypatch.delenv(eval_cache.ENV_OFF, raising=False)


def _windows(n=6, seq=32, seed=0):
    return torch.randint(0, 128, (n, seq), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch", ["llama", "opt", "gpt2"])
def test_window_nll_matches_a_float64_transcription(arch):
    model, x = tiny_model(arch), _windows()
    assert evaluate._split_head(model) is not None  # the shortcut is the path under test
    with torch.no_grad():
        logits = model(input_ids=x).logits.double()[:, :-1]  # (n, seq-1, vocab)
    want = -logits.log_softmax(-1).gather(-1, x[:, 1:, None]).squeeze(-1).sum(1)  # (n,)
    got = evaluate.window_nll(model, x, batch_size=4)  # two batches, the last one short
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    ppl = evaluate.perplexity(model, x)
    assert ppl == pytest.approx(math.exp(want.sum().item() / (6 * 31)), rel=1e-5)


def test_batches_shared_among_threads_give_the_sequential_result_and_restore_the_thread_count():
    model, x = tiny_model("llama"), _windows(n=10)
    threads = torch.get_num_threads()
    seen = []
    original = evaluate._nll_split

    def spy(base, head, batch):  # each worker runs its kernels single-threaded
        seen.append(torch.get_num_threads())
        return original(base, head, batch)

    sequential = evaluate.window_nll(model, x, batch_size=3, workers=1)
    evaluate._nll_split = spy
    try:
        shared = evaluate.window_nll(model, x, batch_size=3, workers=2)  # 4 batches, the last short
    finally:
        evaluate._nll_split = original
    torch.testing.assert_close(shared, sequential, rtol=1e-6, atol=1e-6)  # same windows, same order
    assert shared.shape == (10,)
    assert seen[1:] == [1, 1, 1, 1]  # seen[0]: the shortcut's check, on the calling thread
    assert torch.get_num_threads() == threads


def test_shortcut_falls_back_when_the_forward_is_not_base_then_head():
    model, x = tiny_model("llama"), _windows()
    want = evaluate.window_nll(model, x)
    original = model.forward

    def scaled(*args, **kwargs):  # a model that rescales its logits after the head
        out = original(*args, **kwargs)
        out.logits = out.logits * 0.5
        return out

    model.forward = scaled
    got = evaluate.window_nll(model, x)
    with torch.no_grad():
        logits = model(input_ids=x).logits.double()[:, :-1]
    exact = -logits.log_softmax(-1).gather(-1, x[:, 1:, None]).squeeze(-1).sum(1)
    torch.testing.assert_close(got, exact, rtol=1e-5, atol=1e-4)
    assert not torch.allclose(got, want)


def test_bf16_autocast_stays_close_and_auto_falls_back_to_float32(monkeypatch):
    model, x = tiny_model("llama"), _windows()
    p32 = evaluate.perplexity(model, x)
    p16 = evaluate.perplexity(model, x, dtype=torch.bfloat16)
    assert p16 != p32 and p16 == pytest.approx(p32, rel=2e-2)
    monkeypatch.setattr(evaluate, "native_bf16", lambda device: True)
    monkeypatch.setattr(evaluate, "BF16_TOLERANCE", 1.0)
    assert evaluate.causal_reference(model, x, eval_dtype="auto").dtype == torch.bfloat16
    monkeypatch.setattr(evaluate, "BF16_TOLERANCE", 0.0)  # the reference moved: stay in float32
    ref = evaluate.causal_reference(model, x, eval_dtype="auto")
    assert ref.dtype is None and ref.perplexity == pytest.approx(p32, rel=1e-6)
    monkeypatch.setattr(evaluate, "native_bf16", lambda device: False)
    assert evaluate.causal_reference(model, x, eval_dtype="auto").dtype_name == "float32"
    with pytest.raises(ValueError, match="--eval-dtype"):
        evaluate.causal_reference(model, x, eval_dtype="fp8")


def _counting(monkeypatch):
    calls = []
    real = evaluate.window_nll

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluate, "window_nll", counted)
    return calls


def test_reference_is_cached_and_invalidated_by_model_windows_and_settings(monkeypatch):
    model, x = tiny_model("llama"), _windows()
    calls = _counting(monkeypatch)
    first = evaluate.causal_reference(model, x)
    assert not first.cache_hit and len(calls) == 1
    again = evaluate.causal_reference(model, x)
    assert again.cache_hit and len(calls) == 1 and again.perplexity == first.perplexity
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight[0, 0] += 1e-3  # one weight: a different model
    assert not evaluate.causal_reference(model, x).cache_hit and len(calls) == 2
    assert not evaluate.causal_reference(model, x[:4]).cache_hit  # fewer windows
    assert not evaluate.causal_reference(model, _windows(seed=1)).cache_hit  # other text
    assert not evaluate.causal_reference(model, x, seed=1).cache_hit
    assert not evaluate.causal_reference(model, x, tasks=("code_line",)).cache_hit
    assert evaluate.causal_reference(model, x, seed=1).cache_hit  # each entry is kept
    monkeypatch.setattr(evaluate, "CPU_BATCH_TOKENS", 64)  # another batch size
    assert not evaluate.causal_reference(model, x).cache_hit
    assert len(calls) == 7


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong_shape", "nan", "other_settings"])
def test_damaged_cache_entry_is_rebuilt_not_trusted(monkeypatch, damage):
    from safetensors import safe_open
    from safetensors.torch import save_file

    model, x = tiny_model("llama"), _windows()
    want = evaluate.causal_reference(model, x).perplexity
    (path,) = list(eval_cache.cache_dir().glob("*.safetensors"))
    raw = path.read_bytes()
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()  # the stored settings, as written: a file that claims to be this entry
    if damage == "garbage":
        path.write_bytes(b"\x00not a safetensors file" * 3)
    elif damage == "truncated":
        path.write_bytes(raw[: len(raw) - 9])
    elif damage == "wrong_shape":
        save_file({"nll": torch.ones(5, dtype=torch.float64)}, str(path), metadata=meta)
    elif damage == "nan":
        save_file({"nll": torch.full((6,), float("nan"), dtype=torch.float64)}, str(path), metadata=meta)
    else:
        save_file({"nll": torch.ones(6, dtype=torch.float64)}, str(path), metadata={"settings": "{}"})
    calls = _counting(monkeypatch)
    ref = evaluate.causal_reference(model, x)
    assert not ref.cache_hit and len(calls) == 1 and ref.perplexity == pytest.approx(want, rel=1e-12)
    assert evaluate.causal_reference(model, x).cache_hit  # rewritten intact


def test_cache_off_and_unwritable_directory_still_evaluate(monkeypatch, tmp_path):
    model, x = tiny_model("llama"), _windows()
    monkeypatch.setenv(eval_cache.ENV_OFF, "0")
    assert not evaluate.causal_reference(model, x).cache_hit
    assert not evaluate.causal_reference(model, x).cache_hit
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("ATLAS_CACHE", str(blocker))  # .../file/eval cannot be created
    monkeypatch.delenv(eval_cache.ENV_OFF)
    assert evaluate.causal_reference(model, x).perplexity > 1


def test_encoder_reference_embeddings_are_cached(monkeypatch):
    from types import SimpleNamespace

    from transformers import BertTokenizerFast

    model = tiny_model("bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(100)]
    tok_file = eval_cache.cache_dir().parent / "vocab.txt"
    tok_file.parent.mkdir(parents=True, exist_ok=True)
    tok_file.write_text("\n".join(vocab))
    loaded = SimpleNamespace(model=model, tokenizer=BertTokenizerFast(str(tok_file)))
    docs = [" ".join(f"w{(i * 7 + j) % 100}" for j in range(5 + i % 4)) for i in range(12)]
    monkeypatch.setattr("reference_impls.common.data.encoder_eval_texts", lambda p: (docs, docs[:3], 12))
    calls = []
    real = evaluate.embed
    monkeypatch.setattr(evaluate, "embed", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = evaluate.encoder_reference(loaded)
    second = evaluate.encoder_reference(loaded)
    assert len(calls) == 2  # docs and queries once; the second reference came from disk
    torch.testing.assert_close(second.doc_emb, first.doc_emb, rtol=0, atol=0)
    assert second.query_emb.shape == (3, model.config.hidden_size)
