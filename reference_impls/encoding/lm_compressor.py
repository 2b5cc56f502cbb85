"""Language models as compressors: "Language Modeling Is Compression" (Delétang, Ruoss, Duquenne,
Catt, Genewein, Mattern, Grau-Moya, Wenliang, Aitchison, Orseau, Hutter, Veness; arXiv 2309.10668,
ICLR 2024); catalog record `language-modeling-is-compression`.

A model that gives the next token probability p(x_t | x_<t) drives an arithmetic coder to a code of
Σ_t −log₂ p(x_t | x_<t) bits plus a constant: the model's cross-entropy on the text *is* its
compressed size, so perplexity and compression rate are one number (bits per byte =
log₂(perplexity) · tokens / bytes). The decoder runs the same model on what it has decoded so far.

Implemented (fidelity: simplified): the held-out text (the first `--n-bytes` bytes of the project's
held-out corpus, cut at a character boundary), tokenized with the model's BPE tokenizer (which round-
trips it exactly, checked), coded token by token in segments of the model's context (each segment
starts from the end-of-text token) with a range coder (`constriction`'s queue `RangeEncoder`, an
arithmetic coder on 32-bit words) over the model's softmax; decoding runs the model autoregressively
and must give back the same text (`round_trip_exact`). Encoder and decoder compute the probabilities
the same way, one token at a time with a KV cache, so they agree bit for bit. Reported next to it:
gzip (level 9), xz (preset 9 | extreme) and zstd (level 19) on the same bytes, the model's
cross-entropy in bits, and the rate when the model's own weights are counted (the paper's "adjusted"
rate). It runs on the model as the runner hands it over, so `atlas run rtn+lm-compressor` measures a
compressed variant. Not implemented: the paper's byte-level models and its 2048-byte chunking of
images and audio.
"""

from __future__ import annotations

import gzip
import lzma

import constriction
import numpy as np
import torch
import zstandard
from transformers import DynamicCache

from reference_impls.common import corpus
from reference_impls.common.registry import Option, register

FAMILY = constriction.stream.model.Categorical(perfect=False)  # probabilities given per symbol
HEADER_BITS = 32  # the number of tokens, which the decoder needs


# ---------------------------------------------------------------- pure core
class LMPredictor:
    """Next-token probabilities of a causal LM, one token at a time (the decoder's only possible order,
    so the encoder uses it too and both see bit-identical numbers)."""

    def __init__(self, model, *, bos: int):
        self.model, self.bos = model, bos
        self.device = next(model.parameters()).device

    @torch.no_grad()
    def _feed(self, token: int) -> np.ndarray:
        x = torch.tensor([[token]], device=self.device)
        logits = self.model(input_ids=x, cache=self.cache, use_cache=True).logits[0, -1].float()
        return torch.softmax(logits, -1).double().cpu().numpy()  # (V,)

    def reset(self) -> np.ndarray:
        self.cache = DynamicCache(config=self.model.config)
        return self._feed(self.bos)

    def step(self, token: int) -> np.ndarray:
        return self._feed(token)


def arithmetic_encode(tokens: list[int], predictor, *, segment: int) -> tuple[np.ndarray, float]:
    """Range-coded tokens (uint32 words) and the cross-entropy Σ −log₂ p(x_t | x_<t) in bits."""
    encoder = constriction.stream.queue.RangeEncoder()
    ce_bits = 0.0
    for i, tok in enumerate(tokens):
        p = predictor.reset() if i % segment == 0 else predictor.step(tokens[i - 1])
        encoder.encode(np.array([tok], dtype=np.int32), FAMILY, p[None])
        ce_bits -= float(np.log2(p[tok] / p.sum()))
    return encoder.get_compressed(), ce_bits


def arithmetic_decode(words: np.ndarray, n_tokens: int, predictor, *, segment: int) -> list[int]:
    decoder = constriction.stream.queue.RangeDecoder(words)
    tokens: list[int] = []
    for i in range(n_tokens):
        p = predictor.reset() if i % segment == 0 else predictor.step(tokens[-1])
        tokens.append(int(decoder.decode(FAMILY, p[None])[0]))
    return tokens


def baseline_bits_per_byte(data: bytes) -> dict[str, float]:
    """The generic compressors the paper compares to, on the same bytes."""
    n = len(data)
    return {"gzip_bits_per_byte": len(gzip.compress(data, compresslevel=9)) * 8 / n,
            "xz_bits_per_byte": len(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME)) * 8 / n,
            "zstd_bits_per_byte": len(zstandard.ZstdCompressor(level=19).compress(data)) * 8 / n}


# ---------------------------------------------------------------- model-level entry
def heldout_text(n_bytes: int) -> str:
    text = "\n".join(corpus.split_texts("heldout")).encode("utf-8")[:n_bytes]
    return text.decode("utf-8", errors="ignore")  # drop a character the cut split


@register(
    "lm-compressor", family="encoding", papers=["language-modeling-is-compression"], fidelity="simplified",
    summary="Arithmetic coding of held-out text with the causal LM, against gzip / xz / zstd (bits per byte)",
    options={"n_bytes": Option(8192, "bytes of held-out text to compress"),
             "verify": Option(True, "decode the code again and check it gives back the text")},
    bench=[{}],
    bench_models=("causal",),
)
def run_lm_compressor(ctx, *, n_bytes: int, verify: bool) -> dict:
    if ctx.loaded.kind != "causal":
        raise ValueError("lm-compressor needs a causal LM: --model causal")
    if n_bytes < 1:
        raise ValueError(f"--n-bytes must be positive, got {n_bytes}")
    tok = ctx.loaded.tokenizer
    text = heldout_text(n_bytes)
    data = text.encode("utf-8")
    tokens = tok(text, add_special_tokens=False, verbose=False)["input_ids"]
    if tok.decode(tokens, clean_up_tokenization_spaces=False) != text:
        raise ValueError("the tokenizer does not round-trip this text; it cannot be coded losslessly")
    bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    segment = ctx.model.config.max_position_embeddings - 1  # the end-of-text token + the segment
    predictor = LMPredictor(ctx.model.eval(), bos=bos)
    words, ce_bits = arithmetic_encode(tokens, predictor, segment=segment)
    coded_bits = words.size * 32 + HEADER_BITS
    metrics = {"bits_per_byte": coded_bits / len(data), "cross_entropy_bits_per_byte": ce_bits / len(data),
               "coded_bits": coded_bits, "cross_entropy_bits": ce_bits, "n_bytes": len(data),
               "n_tokens": len(tokens), "text_bytes_per_token": len(data) / len(tokens),
               "adjusted_bits_per_byte": (coded_bits + ctx.ledger.model_bits(
                   sum(p.numel() for p in ctx.model.parameters()))) / len(data),
               **baseline_bits_per_byte(data)}
    if verify:
        decoded = arithmetic_decode(words, len(tokens), predictor, segment=segment)
        metrics["round_trip_exact"] = tok.decode(decoded, clean_up_tokenization_spaces=False) == text
    return metrics
