"""Prompt compression measured on held-out text: the prompt-method analogue of `generation.measure_cache`.

The task. Each held-out window (the causal LM's full context, 256 tokens) is split into a *context* (the
first `context` tokens) and a *continuation* (the rest). A method compresses the context to a token
subsequence (`compress(context_ids, continuation_ids) -> kept_ids`, 1-D LongTensors; the continuation is
passed only so that question-aware methods can read their "question" from it), and the continuation is
then scored teacher-forced after three prompts, one forward each:

- the compressed context (`perplexity_compressed`, `next_token_kl` = mean over continuation positions of
  KL(p_full ‖ p_compressed)),
- the full context (`perplexity_full_context`: the ceiling),
- no context, only the end-of-text token (`perplexity_no_context`, `next_token_kl_no_context`: the floor),
- the naive baseline at the same length: the last k context tokens, k = the compressed length
  (`perplexity_truncated`, `next_token_kl_truncated`), i.e. what plain truncation keeps.

`quality_retained` = (log ppl_none − log ppl_compressed) / (log ppl_none − log ppl_full): the share of the
context's benefit (in nats per token) that survives compression (1 = all of it, 0 = as if no context).
`compression_ratio` = context tokens / kept tokens, summed over windows (the LLMLingua papers' "ratio");
`kv_bytes_peak` / `kv_bytes_full` = the cache of the longest compressed-prompt + continuation forward /
of the full window (`generation.full_cache_bytes`, float32); `kv_bytes_ratio` = mean over windows;
`tokens_per_s` = context tokens compressed per second of the method's compression (its small-LM passes
included).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
from torch import nn

from reference_impls.common.generation import full_cache_bytes

Compressor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@torch.no_grad()
def token_surprisal(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """−log p(ids[t+1] | ids[:t+1]) for t = 0 … n−2, in nats: (n−1,) float32 from one forward of ids (n,)."""
    logits = model(input_ids=ids[None], use_cache=False).logits[0, :-1].float()  # (n-1, V)
    return -torch.log_softmax(logits, -1).gather(-1, ids[1:, None])[:, 0]


@torch.no_grad()
def _continuation_logprobs(model: nn.Module, prompt: torch.Tensor,
                           continuation: torch.Tensor) -> torch.Tensor:
    """log p(· | prompt, continuation[:t]) for every continuation position t: (len(continuation), V)."""
    ids = torch.cat([prompt, continuation])[None]
    logits = model(input_ids=ids, use_cache=False).logits[0, prompt.numel() - 1 : -1].float()
    return torch.log_softmax(logits, -1)


def _kl_nll(ref: torch.Tensor, logp: torch.Tensor, targets: torch.Tensor) -> tuple[float, float]:
    """Summed KL(ref ‖ logp) and summed NLL of targets over positions."""
    kl = (ref.exp() * (ref - logp)).sum(-1).sum()
    nll = -logp.gather(-1, targets[:, None]).sum()
    return float(kl), float(nll)


def measure_prompt_compression(model: nn.Module, compress: Compressor, windows: torch.Tensor, *,
                               context: int, bos_id: int = 0) -> dict:
    """The prompt-method metrics (DESIGN §6) over `windows` (n, T): context = [:context], continuation = the
    rest."""
    if not 1 <= context < windows.shape[1]:
        raise ValueError(f"--context must be in 1..{windows.shape[1] - 1}, got {context}")
    sums = dict.fromkeys(("kl", "kl_none", "kl_trunc", "nll", "nll_full", "nll_none", "nll_trunc"), 0.0)
    kept_total, seconds, peak, ratios = 0, 0.0, 0, []
    bos = torch.tensor([bos_id], device=windows.device)
    for window in windows:
        ctx_ids, cont = window[:context], window[context:]
        t0 = time.perf_counter()
        kept = compress(ctx_ids, cont)
        seconds += time.perf_counter() - t0
        if kept.numel() == 0:
            kept = bos  # an empty prompt still needs one position to predict the first continuation token
        full = _continuation_logprobs(model, ctx_ids, cont)
        for key, prompt in (("", kept), ("_none", bos), ("_trunc", ctx_ids[context - kept.numel():])):
            kl, nll = _kl_nll(full, _continuation_logprobs(model, prompt, cont), cont)
            sums["kl" + key] += kl
            sums["nll" + key] += nll
        sums["nll_full"] += _kl_nll(full, full, cont)[1]
        kept_total += kept.numel()
        total = kept.numel() + cont.numel()
        peak = max(peak, full_cache_bytes(model.config, tokens=total))
        ratios.append(total / window.numel())
    n_tok = windows.shape[0] * (windows.shape[1] - context)
    ppl = {k: math.exp(sums[k] / n_tok) for k in ("nll", "nll_full", "nll_none", "nll_trunc")}
    gain = math.log(ppl["nll_none"]) - math.log(ppl["nll_full"])
    n_ctx = windows.shape[0] * context
    return {
        "compression_ratio": n_ctx / kept_total, "kept_fraction": kept_total / n_ctx,
        "perplexity_compressed": ppl["nll"], "perplexity_full_context": ppl["nll_full"],
        "perplexity_no_context": ppl["nll_none"], "perplexity_truncated": ppl["nll_trunc"],
        "quality_retained": (math.log(ppl["nll_none"]) - math.log(ppl["nll"])) / gain if gain else math.nan,
        "next_token_kl": sums["kl"] / n_tok, "next_token_kl_no_context": sums["kl_none"] / n_tok,
        "next_token_kl_truncated": sums["kl_trunc"] / n_tok,
        "kv_bytes_peak": peak, "kv_bytes_full": full_cache_bytes(model.config, tokens=windows.shape[1]),
        "kv_bytes_ratio": sum(ratios) / len(ratios), "kv_batch": 1,  # the kv bytes are of one sequence
        "tokens_per_s": n_ctx / seconds if seconds else float("inf"),
        "windows": int(windows.shape[0]), "context_tokens": context, "continuation_tokens": n_tok,
    }


def measure_on_heldout(ctx, compress: Compressor, *, windows: int = 8, context: int = 192) -> dict:
    """`measure_prompt_compression` on the project's held-out windows (a prompt method's entry calls this)."""
    from reference_impls.common.data import heldout_windows

    if ctx.loaded.kind != "causal":
        raise ValueError("prompt methods need a causal LM (--model causal or a decoder directory)")
    text = heldout_windows(ctx.loaded, max_windows=windows).to(ctx.device)
    bos = ctx.loaded.tokenizer.eos_token_id or 0  # the end-of-text token separates documents in training
    return measure_prompt_compression(ctx.model, compress, text, context=context, bos_id=bos)
