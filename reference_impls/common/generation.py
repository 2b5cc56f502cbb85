"""Generation with a compressed KV cache, through transformers' own extension points, and its measures.

Two hooks of the installed transformers (5.x) carry every KV-cache method:

- **the `Cache` API**: `PolicyCache` is a `transformers.Cache` whose layers (`PolicyLayer`, a
  `DynamicLayer`) ask a method's *policy* which positions to keep and how to hold keys and values. It is
  passed to `model.generate(cache=...)` or `model(cache=...)` like any cache, so the model code is
  untouched. The Cache API was chosen over patching attention modules because it is where transformers
  itself implements sliding windows, offloading and quantized caches (`QuantizedLayer`): positions,
  masks and `generate` all ask the cache how long it is (`get_seq_length`, `get_mask_sizes`).
- **the attention interface** (`AttentionInterface.register`): only for policies that score tokens by
  attention (H2O, SnapKV, TOVA). A registered eager attention computes the softmax weights, as
  `eager_attention_forward` does, and hands them to the layer's policy right after the step's attention;
  SDPA (the default, faster) is kept for every other policy.

Conventions: keys/values `(batch, kv_heads, seq, head_dim)` after RoPE, attention weights
`(batch, heads, q_len, k_len)`. Kept keys keep their original RoPE positions and new tokens get the next
position of the text (kvpress, and H2O's and SnapKV's official code); a policy with
`position_shift = True` instead has the kept keys re-rotated to consecutive positions just before the
query, which gives the same attention as StreamingLLM's pos-shift (positions inside the cache), since
RoPE depends only on relative positions (default RoPE only).
Batches must be unpadded (equal-length prompts): the offsets below assume no padding mask.

Measures (`measure_cache`): cache bytes held after every forward (peak and final, summed over the
tensors the layers actually hold), tokens/s of greedy `generate`, token match rate against full-cache
greedy generation, and on held-out text the mean KL(p_full ‖ p_policy) of next-token distributions and the
perplexity of the continuation, teacher-forced after a compressed prefill.
"""

from __future__ import annotations

import contextvars
import time
from dataclasses import dataclass

import torch
from torch import nn
from transformers import DynamicCache, StoppingCriteria, StoppingCriteriaList
from transformers.cache_utils import Cache, DynamicLayer
from transformers.masking_utils import AttentionMaskInterface, eager_mask
from transformers.modeling_utils import AttentionInterface

ATTENTION_HOOK = "atlas_kv_eager"
_ACTIVE: contextvars.ContextVar[PolicyCache | None] = contextvars.ContextVar("atlas_kv_cache", default=None)


class KVPolicy:
    """What a KV-cache method decides; the defaults keep everything in full precision.

    - `select(layer_idx, keys, values, attn)` → LongTensor `(batch, kv_heads, n_keep)` of cache indices
      to keep, sorted, or None to keep all; `attn` is the step's attention weights when
      `needs_attention`, else None. Called after every forward (prefill and each decoding step).
    - `store(keys, values)` → dict of the tensors the cache really holds (a quantizer returns codes and
      scales), `load(held)` → (keys, values) to attend with. Bytes are counted from `store`'s tensors.
    - `append(held, keys, values, n_new=)`: used instead of `store` after a step that evicted nothing
      (a quantizer encodes only the new tokens there); the default calls `store`.
    """

    needs_attention = False
    position_shift = False

    def select(self, layer_idx: int, keys: torch.Tensor, values: torch.Tensor,
               attn: torch.Tensor | None) -> torch.Tensor | None:
        return None

    def store(self, keys: torch.Tensor, values: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"keys": keys, "values": values}

    def load(self, held: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return held["keys"], held["values"]

    def append(self, held: dict[str, torch.Tensor], keys: torch.Tensor, values: torch.Tensor, *,
               n_new: int) -> dict[str, torch.Tensor]:
        """What to hold after a step that evicted nothing: `held` is what the cache held before it,
        keys/values are `load(held)` followed by the step's `n_new` tokens. A quantizer overrides this to
        encode only the new tokens (re-encoding decoded codes would compound the error); default: `store`."""
        return self.store(keys, values)


class KeepAll(KVPolicy):
    """The full cache: the reference every policy is measured against."""


def gather_positions(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """x (batch, kv_heads, seq, d) at kept indices (batch, kv_heads, n) → (batch, kv_heads, n, d)."""
    return x.gather(2, keep.unsqueeze(-1).expand(-1, -1, -1, x.shape[-1]))


def group_mean(attn: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """Attention (batch, heads, q, k) → (batch, kv_heads, q, k), the mean over the query heads that share
    each KV head (GQA; consecutive heads form a group, as `repeat_interleave` of the keys makes them):
    how kvpress scores a KV head from its queries' attention, for policies that evict per KV head."""
    b, h, q, k = attn.shape
    return attn.view(b, kv_heads, h // kv_heads, q, k).mean(2)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class PolicyLayer(DynamicLayer):
    """One layer's cache: holds what the policy stores, and tracks how many tokens it has seen."""

    def __init__(self, policy: KVPolicy, layer_idx: int, rotary: nn.Module | None = None) -> None:
        super().__init__()
        self.policy, self.layer_idx, self.rotary = policy, layer_idx, rotary
        self.held: dict[str, torch.Tensor] = {}
        self.seen = 0  # tokens of text that went through this layer
        self.positions: torch.Tensor | None = None  # (batch, kv_heads, n) RoPE position of each held key

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        b, h, _, _ = key_states.shape
        self.positions = torch.empty(b, h, 0, dtype=torch.long, device=key_states.device)

    @property
    def n_held(self) -> int:
        return 0 if self.positions is None else self.positions.shape[-1]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        b, h, q, _ = key_states.shape
        new_pos = torch.arange(self.seen, self.seen + q, device=key_states.device).expand(b, h, q)
        if self.held:
            old_k, old_v = self.policy.load(self.held)
            keys, values = torch.cat([old_k, key_states], -2), torch.cat([old_v, value_states], -2)
        else:
            keys, values = key_states, value_states
        self.positions = torch.cat([self.positions, new_pos], -1)
        self.seen, self.n_new = self.seen + q, q
        self.keys, self.values = keys, values  # what this step attends to
        if not self.policy.needs_attention:
            self.compress(None)
        return keys, values

    def compress(self, attn: torch.Tensor | None) -> None:
        """Apply the policy to the keys/values of this step, then hold what it stores."""
        keys, values = self.keys, self.values
        keep = self.policy.select(self.layer_idx, keys, values, attn)
        if keep is None and self.held:
            self.held = self.policy.append(self.held, keys, values, n_new=self.n_new)
            self.keys = self.values = None
            return
        if keep is not None:
            keys, values = gather_positions(keys, keep), gather_positions(values, keep)
            self.positions = self.positions.gather(2, keep)
            if self.policy.position_shift:
                keys = self._shift_positions(keys)
        self.held = self.policy.store(keys, values)
        self.keys = self.values = None  # only `held` stays in memory between steps

    def _shift_positions(self, keys: torch.Tensor) -> torch.Tensor:
        """Re-rotate the n kept keys to the consecutive positions seen-n … seen-1.

        RoPE scores depend only on q_pos − k_pos, so this equals StreamingLLM's pos-shift (keys at cache
        positions 0…n-1, the query at n) while the query keeps its text position, which is what
        `generate` gives it. Rotations compose additively, so a key moves by target − position.
        """
        n = keys.shape[2]
        target = torch.arange(self.seen - n, self.seen, device=keys.device).expand_as(self.positions)
        delta = (target - self.positions).reshape(-1, keys.shape[2]).float()  # (b·h, n)
        cos, sin = self.rotary(keys, delta)  # (b·h, n, d)
        cos, sin = cos.reshape(keys.shape).to(keys.dtype), sin.reshape(keys.shape).to(keys.dtype)
        self.positions = target.clone()
        return keys * cos + _rotate_half(keys) * sin

    def get_seq_length(self) -> int:
        return self.seen  # the next token's RoPE position is its position in the text

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        # kv index i (held keys first, then the query's own) is treated as position offset + i: held keys
        # all precede the query, and the new keys are causal among themselves.
        return self.n_held + query_length, self.seen - self.n_held

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.held.values())

    def reset(self) -> None:
        self.held, self.seen, self.positions = {}, 0, None
        self.keys = self.values = None
        self.is_initialized = False

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("a policy cache cannot be cropped (no assisted or beam decoding)")


class PolicyCache(Cache):
    """A `transformers.Cache` of `PolicyLayer`s, one per decoder layer, all driven by one policy."""

    def __init__(self, model: nn.Module, policy: KVPolicy) -> None:
        n_layers = model.config.get_text_config(decoder=True).num_hidden_layers
        rotary = _rotary(model) if policy.position_shift else None
        if policy.position_shift and rotary is None:
            raise ValueError("position_shift needs a model with a rotary embedding (Llama-style)")
        super().__init__(layers=[PolicyLayer(policy, i, rotary) for i in range(n_layers)])
        self.policy = policy

    def nbytes(self) -> int:
        """Bytes of every tensor the cache holds now."""
        return sum(layer.nbytes() for layer in self.layers)


def _rotary(model: nn.Module) -> nn.Module | None:
    base = getattr(model, "model", model)
    return getattr(base, "rotary_emb", None)


def full_cache_bytes(config, *, tokens: int, batch: int = 1, dtype: torch.dtype = torch.float32) -> int:
    """2 · layers · kv_heads · head_dim · tokens · bytes: what a full cache of `tokens` positions holds."""
    cfg = config.get_text_config(decoder=True)
    kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return 2 * cfg.num_hidden_layers * kv_heads * head_dim * tokens * batch * torch.finfo(dtype).bits // 8


# ---------------------------------------------------------------- the attention hook
def _fit_mask(mask: torch.Tensor, k_len: int) -> torch.Tensor:
    """transformers builds one mask for all layers from layer 0's sizes, but a policy may hold a different
    number of keys in each layer (PyramidKV). Held keys precede every query and batches are unpadded, so
    only the last q columns (the new tokens, causal among themselves) carry information: keep those and
    make every held key visible."""
    q = mask.shape[-2]
    if mask.shape[-1] == k_len:
        return mask
    return nn.functional.pad(mask[..., -q:], (k_len - q, 0), value=0.0)


def _eager_with_policy(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """Eager attention (softmax weights materialised) that hands the weights to the active policy.

    The parameter order is transformers' own (`sdpa_attention_forward`): wrappers such as kvpress's
    attention patch pass `dropout` positionally."""
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    groups = query.shape[1] // key.shape[1]
    k = key.repeat_interleave(groups, dim=1)  # (batch, heads, k_len, d)
    v = value.repeat_interleave(groups, dim=1)
    scores = torch.matmul(query, k.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores + _fit_mask(attention_mask, key.shape[-2])
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)  # (b, heads, q, k)
    out = torch.matmul(weights, v).transpose(1, 2).contiguous()
    cache = _ACTIVE.get()
    if cache is not None:
        cache.layers[module.layer_idx].compress(weights)
    return out, weights


AttentionInterface.register(ATTENTION_HOOK, _eager_with_policy)
# transformers builds no mask at all for an attention name it has no mask function for (it assumes a
# backend that masks itself), which would make the hook non-causal: give it the eager additive mask.
AttentionMaskInterface.register(ATTENTION_HOOK, eager_mask)


class policy_attention:
    """Context manager: route `model`'s attention through the hook while `cache` is in use."""

    def __init__(self, model: nn.Module, cache: PolicyCache) -> None:
        self.model, self.cache = model, cache

    def __enter__(self):
        self.token = _ACTIVE.set(self.cache)
        self.previous = self.model.config._attn_implementation
        if self.cache.policy.needs_attention:
            self.model.set_attn_implementation(ATTENTION_HOOK)
        return self.cache

    def __exit__(self, *exc) -> None:
        if self.cache.policy.needs_attention:
            self.model.set_attn_implementation(self.previous)
        _ACTIVE.reset(self.token)


@torch.no_grad()
def capture_attention(model: nn.Module, input_ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Attention weights of every layer, (batch, heads, seq, seq) each, from the eager path."""
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        return model(input_ids=input_ids, output_attentions=True, use_cache=False).attentions
    finally:
        model.set_attn_implementation(previous)


# ---------------------------------------------------------------- generation and its measures
class _RecordBytes(StoppingCriteria):
    """Called by `generate` after every forward: records the cache's bytes, never stops."""

    def __init__(self, cache: PolicyCache) -> None:
        self.cache, self.history = cache, [cache.nbytes()]

    def __call__(self, input_ids, scores, **kwargs) -> torch.Tensor:
        self.history.append(self.cache.nbytes())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


@dataclass
class Generation:
    tokens: torch.Tensor  # (batch, new_tokens) generated ids
    bytes_per_step: list[int]  # cache bytes after the prefill and after each decoding forward
    seconds: float

    @property
    def bytes_peak(self) -> int:
        return max(self.bytes_per_step)

    @property
    def bytes_final(self) -> int:
        return self.bytes_per_step[-1]


@torch.no_grad()
def generate(model: nn.Module, input_ids: torch.Tensor, policy: KVPolicy, *,
             max_new_tokens: int) -> Generation:
    """Greedy `model.generate` with the policy's cache; records its bytes after every forward."""
    cache = PolicyCache(model, policy)
    recorder = _RecordBytes(cache)
    with policy_attention(model, cache):
        t0 = time.perf_counter()
        out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), cache=cache,
                             max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, do_sample=False,
                             stopping_criteria=StoppingCriteriaList([recorder]), pad_token_id=0)
        seconds = time.perf_counter() - t0
    return Generation(out[:, input_ids.shape[1]:], recorder.history[1:], seconds)


@torch.no_grad()
def teacher_forced_logprobs(model: nn.Module, ids: torch.Tensor, policy: KVPolicy | None, *,
                            prefill: int) -> torch.Tensor:
    """Next-token log-probs (batch, seq − prefill, vocab) for positions prefill-1 … seq-2.

    With `policy` None: one full forward (the full-cache reference). Otherwise the first `prefill`
    tokens go in as one forward (where prefill-time methods compress), then the rest one token at a
    time through the policy's cache, as in generation.
    """
    if policy is None:
        logits = model(input_ids=ids, use_cache=False).logits[:, prefill - 1 : -1]
        return torch.log_softmax(logits.float(), -1)
    cache = PolicyCache(model, policy)
    steps = []
    with policy_attention(model, cache):
        out = model(input_ids=ids[:, :prefill], cache=cache, use_cache=True)
        steps.append(out.logits[:, -1])
        for t in range(prefill, ids.shape[1] - 1):
            out = model(input_ids=ids[:, t : t + 1], cache=cache, use_cache=True)
            steps.append(out.logits[:, -1])
    return torch.log_softmax(torch.stack(steps, 1).float(), -1)


def kl_and_perplexity(ref_logp: torch.Tensor, logp: torch.Tensor,
                      targets: torch.Tensor) -> tuple[float, float]:
    """Mean KL(p_ref ‖ p) over positions, and the perplexity of `targets` under p."""
    kl = (ref_logp.exp() * (ref_logp - logp)).sum(-1).mean()
    nll = -logp.gather(-1, targets.unsqueeze(-1)).mean()
    return float(kl), float(nll.exp())


def measure_cache(model: nn.Module, policy: KVPolicy, *, prompts: torch.Tensor, heldout: torch.Tensor,
                  prefill: int, max_new_tokens: int) -> dict:
    """The KV-cache metrics of the result record (DESIGN §6) for one policy against the full cache.

    prompts: (batch, P) ids to generate from; heldout: (batch, T) held-out windows, the first `prefill`
    tokens given at once, the rest teacher-forced one by one.
    """
    full = generate(model, prompts, KeepAll(), max_new_tokens=max_new_tokens)
    ours = generate(model, prompts, policy, max_new_tokens=max_new_tokens)
    ref_logp = teacher_forced_logprobs(model, heldout, None, prefill=prefill)
    logp = teacher_forced_logprobs(model, heldout, policy, prefill=prefill)
    kl, ppl = kl_and_perplexity(ref_logp, logp, heldout[:, prefill:])
    _, ppl_full = kl_and_perplexity(ref_logp, ref_logp, heldout[:, prefill:])
    new_tokens = ours.tokens.numel()
    return {
        "kv_bytes_peak": ours.bytes_peak, "kv_bytes_final": ours.bytes_final,
        "kv_bytes_full": full.bytes_peak, "kv_bytes_ratio": ours.bytes_peak / full.bytes_peak,
        "token_match_rate": float((ours.tokens == full.tokens).float().mean()),
        "next_token_kl": kl, "perplexity_kv": ppl, "perplexity_kv_full": ppl_full,
        "tokens_per_s": new_tokens / ours.seconds, "tokens_per_s_full": full.tokens.numel() / full.seconds,
        "generated_tokens": new_tokens, "prompt_tokens": int(prompts.shape[1]),
        "kv_batch": int(prompts.shape[0]),
        "heldout_prefill": prefill, "heldout_tokens": int(heldout.shape[0] * (heldout.shape[1] - prefill)),
    }


def default_cache() -> DynamicCache:
    """transformers' own full cache, for comparisons in tests."""
    return DynamicCache()


def measure_on_heldout(ctx, policy: KVPolicy, *, windows: int = 4, prefill: int = 128,
                       new_tokens: int = 128) -> dict:
    """`measure_cache` on the project's held-out windows (a method's model-level entry calls this).

    Prompts are the first `prefill` tokens of `windows` held-out windows; the same windows, whole,
    are the teacher-forced text. The defaults fill the causal LM's 256-token context (128 + 128), so
    budgets of 64 and 128 are the issue's 25% and 50% of the context.
    """
    from reference_impls.common.data import heldout_windows

    if ctx.loaded.kind != "causal":
        raise ValueError("KV-cache methods need a causal LM (--model causal or a decoder directory)")
    text = heldout_windows(ctx.loaded, max_windows=windows).to(ctx.device)
    if not 1 <= prefill < text.shape[1]:
        raise ValueError(f"--prefill must be in 1..{text.shape[1] - 1}, got {prefill}")
    room = ctx.loaded.max_length - prefill
    if not 1 <= new_tokens <= room:
        raise ValueError(f"--new-tokens must be in 1..{room} "
                         f"(the model's context is {ctx.loaded.max_length})")
    return measure_cache(ctx.model, policy, prompts=text[:, :prefill], heldout=text, prefill=prefill,
                         max_new_tokens=new_tokens)
