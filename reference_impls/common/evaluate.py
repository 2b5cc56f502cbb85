"""Evaluation of a (compressed) model against its uncompressed self.

Causal LM: perplexity = exp(mean next-token NLL) over fixed non-overlapping windows of the held-out
stream, every position after the first of each window predicted (the protocol of the GPTQ paper's
WikiText2 numbers, on our held-out modules).

Encoder: mean-pooled, L2-normalised sentence embeddings (all-MiniLM-L6-v2's pooling). `cosine` is
the mean cosine similarity between each text's compressed and uncompressed embedding;
`retrieval_agreement` the mean overlap |top-k(compressed) ∩ top-k(uncompressed)| / k of the
documents that each query retrieves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@torch.no_grad()
def perplexity(model, windows: torch.Tensor, *, batch_size: int = 8) -> float:
    """exp of the mean NLL over all predicted positions of `windows` (n_windows, seq_len)."""
    device = next(model.parameters()).device
    nll, count = 0.0, 0
    for i in range(0, windows.shape[0], batch_size):
        x = windows[i : i + batch_size].to(device)  # (b, seq)
        logits = model(input_ids=x, use_cache=False).logits[:, :-1].float()  # (b, seq-1, vocab)
        flat_logits, targets = logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1)
        nll += F.cross_entropy(flat_logits, targets, reduction="sum").item()
        count += x[:, 1:].numel()
    return math.exp(nll / count)


@torch.no_grad()
def embed(model, tokenizer, texts: list[str], *, batch_size: int = 32, max_length: int = 128) -> torch.Tensor:
    """Mean-pooled, normalised embeddings (n_texts, hidden), in float32 on CPU.

    128 tokens is the length all-MiniLM-L6-v2 was trained at; texts are batched by length so that
    padding costs little, and returned in their original order.
    """
    device = next(model.parameters()).device
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = []
    for i in range(0, len(texts), batch_size):
        chunk = [texts[j] for j in order[i : i + batch_size]]
        enc = tokenizer(
            chunk, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        ).to(device)
        hidden = model(**enc).last_hidden_state.float()  # (b, seq, hidden)
        mask = enc["attention_mask"].unsqueeze(-1).float()  # (b, seq, 1)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        out.append(F.normalize(pooled, dim=-1).cpu())
    emb = torch.cat(out)
    return emb[torch.argsort(torch.tensor(order))]  # back to the order of `texts`


@dataclass
class EncoderReference:
    """Uncompressed embeddings of the evaluation documents and queries."""

    docs: list[str]
    queries: list[str]
    doc_emb: torch.Tensor  # (n_docs, hidden)
    query_emb: torch.Tensor  # (n_queries, hidden)
    n_records: int


def top_k(query_emb: torch.Tensor, doc_emb: torch.Tensor, k: int) -> torch.Tensor:
    return (query_emb @ doc_emb.t()).topk(min(k, doc_emb.shape[0]), dim=1).indices  # (n_queries, k)


def encoder_fidelity(
    ref: EncoderReference, doc_emb: torch.Tensor, query_emb: torch.Tensor, k: int = 10
) -> dict:
    cos = torch.cat([(ref.doc_emb * doc_emb).sum(-1), (ref.query_emb * query_emb).sum(-1)]).mean().item()
    ref_top, new_top = top_k(ref.query_emb, ref.doc_emb, k), top_k(query_emb, doc_emb, k)
    overlap = [
        len(set(a.tolist()) & set(b.tolist())) / ref_top.shape[1]
        for a, b in zip(ref_top, new_top, strict=True)
    ]
    return {"cosine": cos, "retrieval_agreement": sum(overlap) / len(overlap)}


def encoder_reference(loaded, papers_dir="papers") -> EncoderReference:
    from reference_impls.common.data import encoder_eval_texts

    docs, queries, n_records = encoder_eval_texts(papers_dir)
    return EncoderReference(docs, queries, embed(loaded.model, loaded.tokenizer, docs),
                            embed(loaded.model, loaded.tokenizer, queries), n_records)


def evaluate_encoder(loaded, ref: EncoderReference) -> dict:
    doc_emb = embed(loaded.model, loaded.tokenizer, ref.docs)
    query_emb = embed(loaded.model, loaded.tokenizer, ref.queries)
    metrics = encoder_fidelity(ref, doc_emb, query_emb)
    metrics.update(n_docs=len(ref.docs), n_catalog_records=ref.n_records, n_queries=len(ref.queries))
    return metrics
