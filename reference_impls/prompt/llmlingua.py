"""LLMLingua: "LLMLingua: Compressing Prompts for Accelerated Inference of Large Language Models" (Jiang, Wu,
Lin, Yang, Qiu; arXiv 2310.05736, EMNLP 2023); catalog record `llmlingua`.

A small LM scores every prompt token; predictable tokens are dropped. Two stages, as in the official
`llmlingua.PromptCompressor.compress_prompt` (microsoft/LLMLingua, package 0.2.2, `rank_method="llmlingua"`):

1. **Budget controller** (coarse, `budget_controller`; the paper's Algorithm 1, the package's
   `control_context_budget`): the prompt's segments ("demonstrations") are ranked by the small LM's
   perplexity of each segment on its own, highest first, and kept in that order until the budget
   target + `context_budget` tokens is used up (the segment that crosses it is kept); kept segments stay in
   their original order.
2. **Iterative token-level compression** (`iterative_compress`, the package's `iterative_compress_prompt`
   and `get_compressed_input`): the kept text is cut into windows of `iterative_size` tokens (each window
   has its ratio, `chunk_ratios` = `get_dynamic_compression_ratio`); windows are compressed in order, and
   before each one the surprisals are recomputed on the text *as compressed so far*, so a window's scores
   are conditioned on the already-compressed prefix (the paper's Eq. 5). A window keeps the tokens whose
   score exceeds a threshold: the value at rank int(len·ratio)−1 of **all** current scores sorted in
   descending order (`get_estimate_threshold_base_distribution`; the package ranks over the whole score
   array, entries of later windows from the first pass included, not over the window alone).

Token indexing (DESIGN §6): the package's `get_compressed_input` keeps token i when `loss[i] > threshold`,
where `loss[i]` is the cross-entropy of token **i+1** (the shifted LM loss): a token is judged by the
surprisal of the token *after* it, and the last token is always kept. The paper's text (Eq. 5-6) judges
each token x_i by its own p(x_i | x_<i). We follow the package (this is what agreement with it needs).

Our prompt (see `common.prompt_eval`): the first `context` tokens of a held-out window of Python source;
segments = blocks of whole lines ending at a blank line, cut to at most `segment_tokens` tokens
(`segment_spans`), standing in for the paper's demonstrations. Segments are spans of the token sequence,
so the kept tokens are concatenated as ids (the package re-tokenizes "\\n\\n"-joined strings).
`--ratio` = target fraction of context tokens kept (the package's `rate`); `target_token` = ratio · n.
Defaults are scaled to a 256-token model: `iterative_size` 64 (official 200, for 2k-token LLaMA prompts;
note the official loop leaves a prompt shorter than iterative_size almost untouched, and a tail shorter
than one window uncompressed) and `context_budget` +16 tokens (official +100).

Fidelity: simplified. The token-level stage and the budget controller follow the package (agreement
checked against `llmlingua` 0.2.2 on the project's model in tests/test_prompt_llmlingua_package.py);
left out: distribution alignment (instruction-tuning the small LM on the target LLM's outputs, the paper's
§3.3), the separate instruction/question budgets (our prompt is one context), the package's KV-cache
trimming for prompts longer than the small LM's context (ours always fit), `keep_split`, and the
sentence-level filter (off by default in the package too).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from reference_impls.common.prompt_eval import measure_on_heldout, token_surprisal
from reference_impls.common.registry import Option, register

ScoreFn = Callable[[torch.Tensor], torch.Tensor]  # ids (n,) -> (n-1,) score of token t+1 given ids[:t+1]


# ---------------------------------------------------------------- the official code's pieces, pure
def official_threshold(scores: torch.Tensor, ratio: float) -> float:
    """The score at rank int(len·ratio)−1 of the descending sort, clamped to [0, len−1]; −inf at ratio 1
    (`get_estimate_threshold_base_distribution`; the package's padding value 10000 never occurs here)."""
    if ratio == 1.0:
        return float("-inf")
    k = max(0, min(scores.numel() - 1, int(scores.numel() * ratio) - 1))
    return float(scores.sort(descending=True).values[k])


def chunk_ratios(lengths: list[int], *, target_token: float, iterative_size: int,
                 dynamic_ratio: list[float]) -> list[list[tuple[int, float]]]:
    """Per window, the (tokens, ratio) runs of each segment in it (`get_dynamic_compression_ratio`).

    τ = target / (Σ lengths + 1); segment j's ratio is clamp(τ + dynamic_ratio[j], 0, 1). The package
    counts from 1 (`last = 1`), so its first window is iterative_size − 1 tokens long.
    """
    def clamp(delta: float) -> float:
        return max(min(1.0, tau + delta), 0.0)

    tau = target_token / (sum(lengths) + 1)
    plan, last, current = [], 1, []
    for length, delta in zip(lengths, dynamic_ratio, strict=True):
        if last + length >= iterative_size:
            current.append((iterative_size - last, clamp(delta)))
            plan.append(current)
            last = last + length - iterative_size
            if last > iterative_size:
                k = last // iterative_size
                plan.extend([[(iterative_size, clamp(delta))]] * k)
                last -= k * iterative_size
            current = [(last, clamp(delta))] if last else []
        else:
            last += length
            current.append((length, clamp(delta)))
    if current:
        plan.append(current)
    return plan


def iterative_compress(ids: torch.Tensor, score: ScoreFn, *, plan: list[list[tuple[int, float]]],
                       iterative_size: int) -> torch.Tensor:
    """Indices into `ids` (n,) of the kept tokens, sorted (the package's token-level loop, start = 0).

    `past[i]` is the current score of token i+1 of the compressed text `cur`; pass 0 scores the whole
    text, pass w > 0 re-scores `cur[:end]` (the compressed prefix + window w) and overwrites
    past[ready:end−1].
    """
    cur, pos = ids, torch.arange(ids.numel(), device=ids.device)
    end, ready, past = min(iterative_size, ids.numel()), 0, None
    for w, runs in enumerate(plan):
        if end > cur.numel():
            break
        fresh = score(cur if w == 0 else cur[:end])  # (len−1,): the package scores all of cur first
        if fresh.numel() == 0:
            break
        if past is None:
            past = fresh
        else:
            if end - 1 > past.numel():
                past = torch.cat([past, past.new_zeros(end - 1 - past.numel())])
            past = past.clone()
            past[ready : end - 1] = fresh[ready:]  # the package reuses the prefix's KV cache: same values
        ready = end - iterative_size
        for delta, ratio in runs:
            threshold = official_threshold(past, ratio)
            e = end - iterative_size + delta  # the run compresses cur[e − delta : e]
            need = torch.cat([past > threshold, past[:1] > 0])  # token i judged by score of token i+1
            need[e:] = True  # Python slicing, negative bounds included, as in the package
            need[: e - delta] = True
            past = past[need[:-1]]
            need = torch.cat([need, need.new_ones(max(cur.numel() - need.numel(), 0))])[: cur.numel()]
            cur, pos = cur[need], pos[need]
            end = e - int((~need[:e]).sum()) + iterative_size
    return pos


def budget_controller(segment_scores: list[float], lengths: list[int], *, target_token: float,
                      context_budget: int, descending: bool = True) -> list[int]:
    """Indices of the kept segments in the order they were visited (`control_context_budget`; callers
    sort them back into the text's order, as the package's default `reorder_context="original"`).

    Segments are visited by score (descending: LLMLingua's perplexity; ascending: LongLLMLingua's
    question perplexity) and kept until target_token + context_budget tokens are spent, the segment that
    crosses the budget included. A negative target is taken as 100, as in the package.
    """
    budget = (100 if target_token < 0 else target_token) + context_budget
    order = sorted(range(len(lengths)), key=lambda j: segment_scores[j], reverse=descending)
    used = []
    for j in order:
        budget -= lengths[j]
        used.append(j)
        if budget < 0:
            break
    return used


def segment_spans(pieces: list[str], *, max_tokens: int) -> list[tuple[int, int]]:
    """[start, end) token spans: blocks of whole lines ending at a blank line, at most max_tokens long
    (a longer single line is its own span). `pieces` = the decoded text of each token."""
    lines, start = [], 0
    for t, piece in enumerate(pieces):
        if "\n" in piece or t == len(pieces) - 1:
            lines.append((start, t + 1))
            start = t + 1
    spans, s, e = [], 0, 0
    for ls, le in lines:
        if e > s and le - s > max_tokens:
            spans.append((s, e))
            s = ls
        e = le
        text = "".join(pieces[ls:le])
        if not text.strip() or "\n\n" in text.replace(" ", ""):  # a blank line closes the block
            spans.append((s, e))
            s = e
    if e > s:
        spans.append((s, e))
    return spans


def mean_score(score: ScoreFn, ids: torch.Tensor) -> float:
    """The package's segment perplexity (`get_ppl(granularity="sentence")`): mean loss over the segment
    alone; 0 for a one-token segment (no loss term)."""
    s = score(ids)
    return float(s.mean()) if s.numel() else 0.0


def llmlingua_compress(ids: torch.Tensor, score: ScoreFn, pieces: list[str], *, ratio: float,
                       iterative_size: int = 64, context_budget: int = 16,
                       segment_tokens: int = 32) -> torch.Tensor:
    """Kept positions of `ids` (n,), sorted: the budget controller, then iterative token-level compression."""
    spans = segment_spans(pieces, max_tokens=segment_tokens)
    lengths = [e - s for s, e in spans]
    target = ratio * ids.numel()
    ppl = [mean_score(score, ids[s:e]) for s, e in spans]
    used = sorted(budget_controller(ppl, lengths, target_token=target, context_budget=context_budget))
    positions = torch.cat([torch.arange(spans[j][0], spans[j][1], device=ids.device) for j in used])
    plan = chunk_ratios([lengths[j] for j in used], target_token=target, iterative_size=iterative_size,
                        dynamic_ratio=[0.0] * len(used))
    return positions[iterative_compress(ids[positions], score, plan=plan, iterative_size=iterative_size)]


def token_pieces(tokenizer, ids: torch.Tensor) -> list[str]:
    """The decoded text of each token (to find line and word boundaries)."""
    return [tokenizer.decode([i]) for i in ids.tolist()]


@register(
    "llmlingua", family="prompt", papers=["llmlingua"], fidelity="simplified",
    summary="Budget controller over segments + iterative token-level pruning by small-LM surprisal",
    options={
        "ratio": Option(0.5, "target fraction of context tokens kept (the package's rate)"),
        "iterative_size": Option(64, "tokens per window of the iterative stage (official 200)"),
        "context_budget": Option(16, "tokens over the target the coarse stage may keep (official +100)"),
        "segment_tokens": Option(32, "longest segment (blank-line-separated blocks of lines)"),
        "context": Option(192, "context tokens of each 256-token window (the rest is the continuation)"),
        "windows": Option(8, "held-out windows measured"),
    },
    bench=[{"ratio": 0.5}, {"ratio": 0.33}, {"ratio": 0.25}],
    bench_models=("causal",),
)
def run_llmlingua(ctx, *, ratio, iterative_size, context_budget, segment_tokens, context, windows) -> dict:
    if not 0 < ratio <= 1:
        raise ValueError(f"--ratio must be in (0, 1], got {ratio}")

    def score(ids):
        return token_surprisal(ctx.model, ids)

    def compress(context_ids, continuation):
        pieces = token_pieces(ctx.loaded.tokenizer, context_ids)
        keep = llmlingua_compress(context_ids, score, pieces, ratio=ratio, iterative_size=iterative_size,
                                  context_budget=context_budget, segment_tokens=segment_tokens)
        return context_ids[keep]

    return measure_on_heldout(ctx, compress, windows=windows, context=context)
