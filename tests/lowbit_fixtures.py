"""Shared fixtures of the low-bit quantization tests: a RunContext on a tiny random Llama."""

import torch

from reference_impls.common.adapters import adapter_for
from reference_impls.common.models import LoadedModel, tiny_model
from reference_impls.common.runner import RunContext


def tiny_ctx(seed: int = 0, arch: str = "llama") -> RunContext:
    """A RunContext on `tiny_model(arch)` with two random calibration batches (no tokenizer, no data)."""
    model = tiny_model(arch, seed=seed)
    ctx = RunContext(loaded=LoadedModel("tiny", model, None, adapter_for(model), torch.device("cpu")))
    g = torch.Generator().manual_seed(seed)
    batches = [{"input_ids": torch.randint(0, 128, (2, 32), generator=g)} for _ in range(2)]
    ctx.__dict__["calibration"] = batches  # replaces the cached property's corpus draw
    return ctx
