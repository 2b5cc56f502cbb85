"""Memory and energy of inference: weight bytes, KV-cache bytes, bytes moved and energy per token.

Generating one token at batch 1 reads every weight once and the whole KV cache once (decoding is
memory-bound: each weight byte fetched from DRAM serves one multiply-add), so the bytes moved per
token are weight bytes + the KV bytes held at that context, and the energy of moving them is bytes ×
the energy of a DRAM access per byte.

The energy figure: 640 pJ per 32-bit DRAM access (45 nm), i.e. 160 pJ per byte — Horowitz, "Computing's
energy problem (and what we can do about it)", ISSCC 2014, as tabulated in Han, Pool, Tran and Dally,
"Learning both Weights and Connections for Efficient Neural Networks", NeurIPS 2015 (Figure 1). It is a
lower bound on the energy of a token: arithmetic, on-chip SRAM and I/O are not counted, and newer DRAM
(HBM, LPDDR5) is cheaper per byte than 2014's DDR3. The number and its source travel with every
figure (`ENERGY_ASSUMPTION`).

KV bytes are counted in the dtype the cache really holds (the project's models run in float32), so the
calculator's figure equals the bytes measured from the tensors during generation exactly
(`generation.full_cache_bytes` is the same formula).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

DRAM_PJ_PER_32BIT = 640.0
DRAM_J_PER_BYTE = DRAM_PJ_PER_32BIT / 4 * 1e-12
ENERGY_ASSUMPTION = (
    "DRAM access energy 640 pJ per 32-bit word (160 pJ/byte, 45 nm; Horowitz ISSCC 2014 as tabulated in "
    "Han et al. NeurIPS 2015, Fig. 1); every weight byte and the whole KV cache read once per generated "
    "token at batch 1; arithmetic, SRAM and I/O not counted"
)


@dataclass
class MemoryEstimate:
    params: int
    weight_bits_per_param: float
    weight_bytes: int
    kv_bytes_per_token: int  # all layers, keys and values, one sequence
    context: int
    kv_positions: int  # positions held at that context (a budget caps it)
    kv_bytes: int  # held at `context`
    bytes_per_token: int  # moved per generated token at `context`
    energy_per_token_j: float
    assumption: str = ENERGY_ASSUMPTION

    def as_dict(self) -> dict:
        return asdict(self)


def kv_bytes_per_token(config, *, kv_bits: float = 32) -> int:
    """2 (K and V) · layers · kv_heads · head_dim · bits/8 for one token of one sequence."""
    cfg = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return round(2 * cfg.num_hidden_layers * kv_heads * head_dim * kv_bits / 8)


def estimate(config, *, params: int, weight_bits_per_param: float = 16.0, context: int | None = None,
             kv_bits: float = 32, kv_budget: int | None = None, causal: bool = True) -> MemoryEstimate:
    """Bytes and energy of generating one token at `context` (default: the model's full context).

    An encoder (causal=False) has no KV cache: its figures are the weights read once per forward.
    """
    context = context if context is not None else int(getattr(config, "max_position_embeddings", 2048))
    if context < 1:
        raise ValueError(f"--context must be at least 1, got {context}")
    if kv_budget is not None and kv_budget < 1:
        raise ValueError(f"--kv-budget must be at least 1, got {kv_budget}")
    if not 0 < weight_bits_per_param <= 32 or not 0 < kv_bits <= 32:
        raise ValueError("--weight-bits and --kv-bits must be in (0, 32]")
    per_token = kv_bytes_per_token(config, kv_bits=kv_bits) if causal else 0
    positions = min(context, kv_budget) if kv_budget else context
    weight_bytes = round(params * weight_bits_per_param / 8)
    kv = per_token * positions
    moved = weight_bytes + kv
    return MemoryEstimate(params=params, weight_bits_per_param=weight_bits_per_param,
                          weight_bytes=weight_bytes,
                          kv_bytes_per_token=per_token, context=context, kv_positions=positions, kv_bytes=kv,
                          bytes_per_token=moved, energy_per_token_j=moved * DRAM_J_PER_BYTE)


def run_figures(config, *, causal: bool, weight_bits: int, kv_bytes_held: int | None = None) -> dict:
    """The memory figures every `atlas run` record carries, for a compressed model.

    Weights at their true stored size (`weight_bits`, the ledger's count over all parameters); for a
    causal LM the KV cache at the model's full context in the dtype it is held in, or — for a KV-cache
    method — `kv_bytes_held`, the peak it held per sequence during generation.
    """
    weight_bytes = math.ceil(weight_bits / 8)
    if not causal:
        return {"weight_bytes": weight_bytes}
    est = estimate(config, params=1)
    kv = est.kv_bytes if kv_bytes_held is None else kv_bytes_held
    moved = weight_bytes + kv
    return {"weight_bytes": weight_bytes, "kv_bytes_per_token": est.kv_bytes_per_token,
            "kv_bytes_at_context": kv, "context": est.context, "bytes_per_token": moved,
            "energy_per_token_j": moved * DRAM_J_PER_BYTE}


def load_config(spec: str):
    """A transformers config from `causal`, `encoder`, a model directory or a config.json path."""
    from transformers import AutoConfig, PretrainedConfig

    from reference_impls.common.models import resolve

    path = Path(spec)
    if path.is_file():
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{spec}: not a readable config.json ({exc})") from None
        if not isinstance(data, dict) or "model_type" not in data:
            raise ValueError(f"{spec}: config has no model_type")
        cls = AutoConfig.for_model(data["model_type"]).__class__
        return cls.from_dict(data) if issubclass(cls, PretrainedConfig) else AutoConfig.from_pretrained(path)
    target, _ = resolve(spec)
    try:
        return AutoConfig.from_pretrained(target)
    except OSError as exc:
        raise ValueError(f"{spec}: no Hugging Face config here ({exc.__class__.__name__})") from None


def count_params(config) -> int:
    """Parameters of a model built from `config`, without allocating its weights."""
    import torch
    from transformers import AutoModel, AutoModelForCausalLM

    loader = AutoModel if config.model_type in ("bert", "roberta") else AutoModelForCausalLM
    with torch.device("meta"):
        model = loader.from_config(config)
    return sum(p.numel() for p in model.parameters())
