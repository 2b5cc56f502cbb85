"""LongLLMLingua: "LongLLMLingua: Accelerating and Enhancing LLMs in Long Context Scenarios via Prompt
Compression" (Jiang, Wu, Luo, Li, Lin, Yang, Qiu; arXiv 2310.06839, ACL 2024); catalog record
`longllmlingua`.

LLMLingua made question-aware, as the package runs it (microsoft/LLMLingua 0.2.2, `compress_prompt` with
`rank_method="longllmlingua"`, `condition_in_question="after_condition"`, `condition_compare=True`,
`dynamic_context_compression_ratio=δ`):

1. **Question-aware coarse ranking** (`question_perplexity`, the package's `get_distance_longllmlingua`):
   document k is scored by the small LM's mean surprisal of the question followed by the restrictive
   statement " We can get the answer to this question in the given documents." *given* the document
   (the paper's Eq. 2: p(x^que, x^restrict | x^doc_k)); documents are visited from the lowest score and kept
   until the budget (`llmlingua.budget_controller`, ascending).
2. **Dynamic compression ratio** (`dynamic_ratios`, Eq. 5 as the package does it): the N kept documents in
   rank order get ratio offsets +δ … −δ, evenly spaced (δ·(N−1−2k)/(N−1) for rank k), added to the common
   ratio τ and clamped to [0, 1], so better-ranked documents keep more tokens.
3. **Contrastive perplexity** for the iterative token-level stage (`contrastive_score`, Eq. 3): token i+1's
   surprisal without the question minus its surprisal with the question prepended, under the package's
   indexing (token i judged by token i+1's score); the same windows and thresholds as LLMLingua
   (`llmlingua.iterative_compress`).

Our data (see `common.prompt_eval`): the "documents" are LLMLingua's segments of the context (blocks of
lines ending at a blank line, ≤ `segment_tokens`) and the "question" is the continuation's first line
(its first tokens up to and including the first newline, at most `question_tokens`): the next line of
code is what the continuation asks the context about. This is an **oracle query**: the compressor reads
tokens that are then scored (they are the start of the continuation), which Selective Context and
LLMLingua do not see; compare the methods with that in mind. The question is not added to the prompt:
the continuation that follows the compressed context begins with it, which is where the package's
`concate_question` puts it.

Fidelity: simplified. Left out: document reordering (`reorder_context="sort"`: moving documents would
break the text the continuation continues; the package's default keeps the order), subsequence recovery
(a post-processing of the LLM's answer, not of the prompt), the restrictive statement is English text
scored by a model of Python source (kept because the method defines it), the package's "\\n\\n" joins and
its question-prefix separator (our segments are token spans of one text).
"""

from __future__ import annotations

import torch

from reference_impls.common.prompt_eval import measure_on_heldout, token_surprisal
from reference_impls.common.registry import Option, register
from reference_impls.prompt.llmlingua import (
    ScoreFn,
    budget_controller,
    chunk_ratios,
    iterative_compress,
    segment_spans,
    token_pieces,
)

RESTRICTIVE_STATEMENT = " We can get the answer to this question in the given documents."


def question_perplexity(surprisal: ScoreFn, document: torch.Tensor, question: torch.Tensor) -> float:
    """Mean surprisal of the question tokens (restrictive statement included) given the document."""
    s = surprisal(torch.cat([document, question]))  # (len(doc) + len(q) − 1,)
    return float(s[document.numel() - 1 :].mean())


def dynamic_ratios(n: int, *, delta: float) -> list[float]:
    """Ratio offsets by rank (best first): δ·(N−1−2k)/(N−1), from +δ down to −δ; 0 for one document."""
    if n <= 1:
        return [0.0] * n
    return [delta * (n - 1 - 2 * k) / (n - 1) for k in range(n)]


def contrastive_score(surprisal: ScoreFn, question: torch.Tensor) -> ScoreFn:
    """ids (n,) → (n−1,): s(ids[t+1] | ids[:t+1]) − s(ids[t+1] | question, ids[:t+1])."""
    def score(ids: torch.Tensor) -> torch.Tensor:
        conditioned = surprisal(torch.cat([question, ids]))[question.numel() :]  # (n−1,)
        return surprisal(ids) - conditioned
    return score


def longllmlingua_compress(ids: torch.Tensor, surprisal: ScoreFn, pieces: list[str], *,
                           question: torch.Tensor, statement: torch.Tensor, ratio: float,
                           dynamic_ratio: float = 0.3, iterative_size: int = 64, context_budget: int = 16,
                           segment_tokens: int = 32) -> torch.Tensor:
    """Kept positions of `ids` (n,), sorted."""
    spans = segment_spans(pieces, max_tokens=segment_tokens)
    lengths = [e - s for s, e in spans]
    target = ratio * ids.numel()
    query = torch.cat([question, statement])
    scores = [question_perplexity(surprisal, ids[s:e], query) for s, e in spans]
    ranked = budget_controller(scores, lengths, target_token=target, context_budget=context_budget,
                               descending=False)
    offset = dict(zip(ranked, dynamic_ratios(len(ranked), delta=dynamic_ratio), strict=True))
    used = sorted(ranked)
    positions = torch.cat([torch.arange(spans[j][0], spans[j][1], device=ids.device) for j in used])
    plan = chunk_ratios([lengths[j] for j in used], target_token=target, iterative_size=iterative_size,
                        dynamic_ratio=[offset[j] for j in used])
    keep = iterative_compress(ids[positions], contrastive_score(surprisal, question), plan=plan,
                              iterative_size=iterative_size)
    return positions[keep]


def first_line(continuation: torch.Tensor, pieces: list[str], *, max_tokens: int) -> torch.Tensor:
    """The continuation's tokens up to and including the first one containing a newline (≤ max_tokens)."""
    n = next((t + 1 for t, p in enumerate(pieces) if "\n" in p), len(pieces))
    return continuation[: max(1, min(n, max_tokens))]


@register(
    "longllmlingua", family="prompt", papers=["longllmlingua"], fidelity="simplified",
    summary="Question-aware LLMLingua: segments ranked by question perplexity, dynamic ratios, "
            "contrastive token scores",
    options={
        "ratio": Option(0.5, "target fraction of context tokens kept (the package's rate)"),
        "dynamic_ratio": Option(0.3, "δ of the dynamic compression ratio across documents"),
        "question_tokens": Option(16, "longest question (the continuation's first line)"),
        "iterative_size": Option(64, "tokens per window of the iterative stage (official 200)"),
        "context_budget": Option(16, "tokens over the target the coarse stage may keep (official +100)"),
        "segment_tokens": Option(32, "longest segment (blank-line-separated blocks of lines)"),
        "context": Option(192, "context tokens of each 256-token window (the rest is the continuation)"),
        "windows": Option(8, "held-out windows measured"),
    },
    bench=[{"ratio": 0.5}, {"ratio": 0.33}, {"ratio": 0.25}],
    bench_models=("causal",),
)
def run_longllmlingua(ctx, *, ratio, dynamic_ratio, question_tokens, iterative_size, context_budget,
                      segment_tokens, context, windows) -> dict:
    if not 0 < ratio <= 1:
        raise ValueError(f"--ratio must be in (0, 1], got {ratio}")
    tokenizer = ctx.loaded.tokenizer
    statement = torch.tensor(tokenizer(RESTRICTIVE_STATEMENT, add_special_tokens=False)["input_ids"],
                             device=ctx.device)

    def surprisal(ids):
        return token_surprisal(ctx.model, ids)

    def compress(context_ids, continuation):
        question = first_line(continuation, token_pieces(tokenizer, continuation), max_tokens=question_tokens)
        keep = longllmlingua_compress(
            context_ids, surprisal, token_pieces(tokenizer, context_ids), question=question,
            statement=statement, ratio=ratio, dynamic_ratio=dynamic_ratio, iterative_size=iterative_size,
            context_budget=context_budget, segment_tokens=segment_tokens)
        return context_ids[keep]

    return measure_on_heldout(ctx, compress, windows=windows, context=context)
