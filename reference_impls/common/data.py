"""Calibration and held-out data, deterministic under a seed.

Causal LMs: calibration windows come from the calibration modules of the standard-library split,
perplexity from the held-out modules (reference_impls.common.corpus), each file tokenized by the
model's own tokenizer and followed by its end-of-text token, exactly as the training script does.

Encoders: evaluation texts are the catalog's paper records (title + summary) and a fixed list of
queries; while the catalog holds fewer than `MIN_DOCS` records it is topped up with docstrings of
held-out standard-library modules so that top-10 retrieval is not trivially perfect. Calibration
texts are docstrings of the calibration modules, never the evaluation texts.
"""

from __future__ import annotations

import ast
import random
from pathlib import Path

import torch

from reference_impls.common import corpus

MIN_DOCS = 200
CALIB_TEXT_TOKENS = 128

QUERIES = (
    "post-training quantization of large language models to 4 bits",
    "second-order weight update using the inverse Hessian",
    "unstructured pruning of transformer weights without retraining",
    "2:4 semi-structured sparsity for GPU acceleration",
    "activation outliers make 8-bit quantization hard",
    "knowledge distillation from a large teacher into a small student",
    "low-rank decomposition of weight matrices",
    "compressing the key-value cache for long contexts",
    "quantization-aware training with straight-through estimator",
    "rotating weights and activations with Hadamard matrices",
    "parameter-efficient finetuning with adapters",
    "removing whole attention heads or layers",
    "mixed-precision bit allocation per layer",
    "benchmark for evaluating compressed models",
    "read lines from a text file",
    "parse command line arguments",
    "serialize Python objects to bytes",
    "match file names against shell wildcard patterns",
    "compute a cryptographic hash digest",
    "split a string like a shell would",
    "guess the MIME type of a file from its name",
    "disassemble Python bytecode",
    "manipulate filesystem paths as objects",
    "draw shapes with a turtle on a canvas",
)


# ---------------------------------------------------------------- causal LM
def sequence_length(loaded) -> int:
    """Window length: the model's context, capped at 2048 as in the official GPTQ code."""
    return min(loaded.max_length, 2048)


def token_stream(tokenizer, texts: list[str]) -> torch.Tensor:
    """One long stream (windowed later): each text's ids followed by the end-of-text token."""
    eos = tokenizer.eos_token_id
    texts = list(texts)
    ids: list[int] = []
    # one batched call: the same ids as a call per text, in half the time (held-out: 0.30 → 0.15 s)
    for encoded in tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"] if texts else []:
        ids.extend(encoded)
        if eos is not None:
            ids.append(eos)
    return torch.tensor(ids, dtype=torch.long)


def heldout_windows(loaded, *, seq_len: int | None = None, max_windows: int | None = None) -> torch.Tensor:
    """Fixed non-overlapping windows over the held-out stream: (n_windows, seq_len)."""
    seq_len = seq_len or sequence_length(loaded)
    stream = token_stream(loaded.tokenizer, corpus.split_texts("heldout"))
    n = stream.numel() // seq_len
    if max_windows is not None:
        n = min(n, max_windows)
    return stream[: n * seq_len].view(n, seq_len)


def causal_calibration(loaded, *, n_samples: int = 128, seed: int = 0, seq_len: int | None = None,
                       batch_size: int = 8) -> list[dict[str, torch.Tensor]]:
    """`n_samples` random windows of the calibration stream, as model-input batches."""
    seq_len = seq_len or sequence_length(loaded)
    stream = token_stream(loaded.tokenizer, corpus.split_texts("calibration"))
    if stream.numel() <= seq_len:
        raise ValueError(
            f"calibration stream ({stream.numel()} tokens) is shorter than one window of {seq_len}"
        )
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, stream.numel() - seq_len, (n_samples,), generator=gen).tolist()
    windows = torch.stack([stream[s : s + seq_len] for s in starts])  # (n_samples, seq_len)
    return [{"input_ids": windows[i : i + batch_size]} for i in range(0, n_samples, batch_size)]


# ---------------------------------------------------------------- encoder
def docstrings(texts: list[str], min_chars: int = 40) -> list[str]:
    """Module, class and function docstrings, in file order, whitespace-normalised."""
    out = []
    for text in texts:
        try:
            tree = ast.parse(text)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= min_chars:
                    out.append(" ".join(doc.split()))
    return out


def _record_texts(papers_dir: Path) -> list[str]:
    """Title and summary of every record, read by catalog.load, the project's one record reader.

    An invalid catalog raises catalog.load.CatalogInvalid, one `file:line: field: message` per error.
    """
    from catalog.load import load_records

    return [f"{r.title} {r.summary_text}" for r in load_records(papers_dir)]


def encoder_eval_texts(papers_dir: Path | str = "papers") -> tuple[list[str], list[str], int]:
    """(documents, queries, number of documents that are catalog records)."""
    records = _record_texts(Path(papers_dir)) if Path(papers_dir).exists() else []
    docs = list(records)
    if len(docs) < MIN_DOCS:
        extra = docstrings(corpus.split_texts("heldout"))
        docs += extra[: MIN_DOCS - len(docs)]
    return docs, list(QUERIES), len(records)


def encoder_calibration(loaded, *, n_samples: int = 128, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """One unpadded text per batch, so padding never enters the calibration statistics."""
    pool = docstrings(corpus.split_texts("calibration"))
    rng = random.Random(seed)
    chosen = [pool[rng.randrange(len(pool))] for _ in range(n_samples)]
    return [
        dict(loaded.tokenizer(t, return_tensors="pt", truncation=True, max_length=CALIB_TEXT_TOKENS))
        for t in chosen
    ]


def calibration(loaded, *, n_samples: int = 128, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    if loaded.kind == "causal":
        return causal_calibration(loaded, n_samples=n_samples, seed=seed)
    return encoder_calibration(loaded, n_samples=n_samples, seed=seed)
