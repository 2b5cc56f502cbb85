"""A RunContext on the tiny random Llama with learnable synthetic text, for QAT / adapter tests."""

import torch

from reference_impls.common import evaluate
from reference_impls.common.adapters import adapter_for
from reference_impls.common.models import LoadedModel, tiny_model
from reference_impls.common.runner import RunContext


def counting_text(n: int, seq: int = 32, *, seed: int = 0, vocab: int = 128, step: int = 1) -> torch.Tensor:
    """(n, seq) token windows where each token is the previous + `step` (mod vocab): easy to learn."""
    g = torch.Generator().manual_seed(seed)
    start = torch.randint(0, vocab, (n, 1), generator=g)
    return (start + step * torch.arange(seq)) % vocab


def tiny_ctx(seed: int = 0) -> RunContext:
    model = tiny_model("llama", seed=seed)
    loaded = LoadedModel("tiny", model, None, adapter_for(model), torch.device("cpu"))
    ctx = RunContext(loaded=loaded, seed=seed)
    text = counting_text(16, seed=seed)
    ctx.__dict__["calibration"] = [{"input_ids": text[i : i + 4]} for i in range(0, 16, 4)]
    heldout = counting_text(8, seed=seed + 100)
    ctx.heldout_perplexity = lambda model=None: evaluate.perplexity(model or ctx.model, heldout)
    return ctx
