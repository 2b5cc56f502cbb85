"""Selective Context: "Compressing Context to Enhance Inference Efficiency of Large Language Models" (Li,
Dong, Lin, Guerin; arXiv 2310.06201, EMNLP 2023); catalog record `selective-context`.

A small causal LM gives every token its self-information I(x_t) = −log p(x_t | x_<t) (the paper's Eq. 1);
tokens are merged into lexical units, a unit's information is aggregated from its tokens, and the units
whose information falls below the p-th percentile are dropped (p = 100 · (1 − ratio)), so the kept share
of *units* is the target and the kept share of tokens adapts to the text.

Implemented (`selective_keep`, `lexical_units`): self-information from the project's causal LM with the
end-of-text token prepended (the official code, liyucheng09/Selective_Context, prepends GPT-2's
`<|endoftext|>` so the first token is scored too); the official filter `info < np.nanpercentile(infos,
mask_ratio·100)` → dropped, i.e. units with info ≥ the percentile (linear interpolation) are kept; unit
information = the **mean** of its tokens' self-information, as the official `_unit_info` computes it
(`--aggregate sum` gives the paper's additive I(unit) = Σ I(x_t) instead). Units (`--unit`): `token`
(the model's BPE tokens), `word` (a new unit starts at a token that begins with whitespace or follows
one that ends with whitespace: whitespace-separated words, punctuation attached), `line` (a unit ends at a
token containing a newline).

Not implemented: spaCy noun phrases and sentences (the paper's phrase and sentence units: our text is
Python source, for which whitespace words and lines are the natural stand-ins); the official
whitespace normalisation (`re.sub(r"\\s+", " ", context)`), which would destroy Python's indentation.
Fidelity: simplified (the filter and the self-information are the paper's; the units differ).

Task and metrics: `common.prompt_eval` (context = the first `context` tokens of a held-out window, the
continuation scored after the compressed context; `--ratio` = fraction of units kept).
"""

from __future__ import annotations

import numpy as np
import torch

from reference_impls.common.prompt_eval import measure_on_heldout, token_surprisal
from reference_impls.common.registry import Option, register

UNITS = ("token", "word", "line")


def lexical_units(pieces: list[str], *, unit: str) -> list[tuple[int, int]]:
    """[start, end) token spans of the lexical units; `pieces` = the decoded text of each token."""
    if unit not in UNITS:
        raise ValueError(f"--unit must be one of {UNITS}, got {unit!r}")
    starts = [0]
    for t in range(1, len(pieces)):
        if unit == "token":
            new = True
        elif unit == "word":
            new = pieces[t][:1].isspace() or pieces[t - 1][-1:].isspace()
        else:  # line: the previous token closed a line
            new = "\n" in pieces[t - 1]
        if new:
            starts.append(t)
    return list(zip(starts, starts[1:] + [len(pieces)], strict=True))


def selective_keep(self_info: torch.Tensor, units: list[tuple[int, int]], *, ratio: float,
                   aggregate: str = "mean") -> torch.Tensor:
    """Kept token positions, sorted: the units whose information ≥ the (1 − ratio) percentile.

    self_info: (n,) I(x_t) of every token; units: spans covering 0 … n−1 in order.
    """
    if not 0 < ratio <= 1:
        raise ValueError(f"--ratio must be in (0, 1], got {ratio}")
    reduce = np.mean if aggregate == "mean" else np.sum
    info = np.array([reduce(self_info[s:e].double().numpy()) for s, e in units])  # (n_units,)
    threshold = np.nanpercentile(info, (1 - ratio) * 100)  # linear interpolation, as the official code
    kept = [torch.arange(s, e) for (s, e), i in zip(units, info, strict=True) if not i < threshold]
    return torch.cat(kept) if kept else torch.empty(0, dtype=torch.long)


@register(
    "selective-context", family="prompt", papers=["selective-context"], fidelity="simplified",
    summary="Drop the lexical units of lowest self-information under a small LM (percentile filter)",
    options={
        "ratio": Option(0.5, "fraction of lexical units kept (1 − the paper's reduce ratio)"),
        "unit": Option("word", "lexical unit", choices=UNITS),
        "aggregate": Option("mean", "a unit's information from its tokens' (official code: mean; "
                                    "paper: sum)", choices=("mean", "sum")),
        "context": Option(192, "context tokens of each 256-token window (the rest is the continuation)"),
        "windows": Option(8, "held-out windows measured"),
    },
    bench=[{"ratio": 0.5}, {"ratio": 0.33}, {"ratio": 0.25}, {"ratio": 0.5, "unit": "token"}],
    bench_models=("causal",),
)
def run_selective_context(ctx, *, ratio, unit, aggregate, context, windows) -> dict:
    tokenizer = ctx.loaded.tokenizer
    bos = torch.tensor([tokenizer.eos_token_id or 0], device=ctx.device)

    def compress(context_ids, continuation):
        self_info = token_surprisal(ctx.model, torch.cat([bos, context_ids])).cpu()  # (n,) every token
        pieces = [tokenizer.decode([i]) for i in context_ids.tolist()]
        keep = selective_keep(self_info, lexical_units(pieces, unit=unit), ratio=ratio, aggregate=aggregate)
        return context_ids[keep.to(context_ids.device)]

    return measure_on_heldout(ctx, compress, windows=windows, context=context)
