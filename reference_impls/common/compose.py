"""Compositions: `atlas run a+b[+c]` applies the stages in order to one model.

Each stage is an ordinary registered method that sees the model the previous stage left (its
calibration activations come from that model), writes its own storage ledger, and the ledgers are
merged matrix by matrix so that the result costs what storing the final matrices would cost:

- pruned, then quantized (SparseGPT 50% then GPTQ 4-bit): the sparse encoding's mask or indices plus
  the kept values at the quantizer's width plus its scales and zeros — when the quantizer left every
  pruned weight at zero (checked on the weights; GPTQ keeps a previous stage's zeros, as SparseGPT's
  joint quantization does); if the zeros were filled in, the quantizer's dense cost stands;
- quantized, then pruned (the reverse order): the pruner's encoding plus the kept values at the
  quantizer's width when the pruner left the kept values on the grid (masking pruners such as Wanda:
  checked value by value); a pruner that updates the kept weights (SparseGPT) moves them off the grid,
  so its own 16-bit values stand;
- structurally pruned (SliceGPT), then quantized: the quantizer's cost of the smaller matrix, over the
  original matrix's weight count (bits per weight stay relative to the uncompressed model);
- any other pair: the later stage's entry replaces the earlier one.

A stage that changes no weight (a KV-cache policy) adds no ledger entry and leaves the others as they
are. `StorageLedger.parts` tells the merge what an entry is made of; entries without it (methods that
record only a total) are replaced by the later stage's entry, never combined.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from reference_impls.common.adapters import get_weight, is_linear
from reference_impls.common.storage import DENSE_BITS, Parts, StorageLedger


def _stage_key(name: str) -> str:
    return name.replace("-", "_")


def split_options(methods: list, options: dict[str, Any]) -> list[dict[str, Any]]:
    """Each stage's keyword arguments: its defaults, overridden by `option` (when exactly one stage
    declares it) and by `stage.option` (that stage only, e.g. `gptq.bits`)."""
    stages = {_stage_key(m.name): m for m in methods}
    label = "+".join(m.name for m in methods)
    given: list[dict[str, Any]] = [{} for _ in methods]
    for key, value in options.items():
        stage, dot, name = key.rpartition(".")
        owners = [i for i, m in enumerate(methods) if key in m.options]
        if dot:
            m = stages.get(_stage_key(stage))
            if m is None or name not in m.options:
                valid = ", ".join(f"--{_stage_key(x.name)}.{o.replace('_', '-')}"
                                  for x in methods for o in x.options)
                raise ValueError(f"unknown option --{key.replace('_', '-')} for {label}; "
                                 f"valid: {valid or '(none)'}")
            owners, key = [methods.index(m)], name
        if not owners:
            known = sorted({k for m in methods for k in m.options})
            valid = ", ".join("--" + k.replace("_", "-") for k in known) or "(none)"
            raise ValueError(f"unknown option(s) --{key.replace('_', '-')} for {label}; valid: {valid}")
        if len(owners) > 1:
            which = " or ".join(f"--{_stage_key(methods[i].name)}.{key.replace('_', '-')}" for i in owners)
            raise ValueError(f"--{key.replace('_', '-')} is an option of several stages of {label}: "
                             f"give {which}")
        given[owners[0]][key] = value
    return [{**m.defaults(), **g} for m, g in zip(methods, given, strict=True)]


def record_options(methods: list, per_method: list[dict[str, Any]]) -> dict[str, Any]:
    """The result record's options: plain names, qualified `stage.option` where stages share a name."""
    if len(methods) == 1:
        return dict(per_method[0])
    count: dict[str, int] = {}
    for kw in per_method:
        for k in kw:
            count[k] = count.get(k, 0) + 1
    return {(k if count[k] == 1 else f"{m.name}.{k}"): v
            for m, kw in zip(methods, per_method, strict=True) for k, v in kw.items()}


def _weight(model, name: str) -> torch.Tensor | None:
    """The (out, in) weight of the module `name` (None when it is not a linear)."""
    try:
        module = model.get_submodule(name)
    except AttributeError:
        return None
    return get_weight(module).detach() if is_linear(module) else None


def _is_sparse(p: Parts, n_weights: int) -> bool:
    return p.index_bits > 0 or p.n_values < n_weights


def _is_quantized(p: Parts, n_weights: int) -> bool:
    return p.index_bits == 0 and p.n_values == n_weights and p.value_bits < DENSE_BITS


def merge_entry(prev: tuple[int, int], prev_parts: Parts | None, new: tuple[int, int],
                new_parts: Parts | None, before: torch.Tensor | None, after: torch.Tensor | None
                ) -> tuple[tuple[int, int], Parts | None, str]:
    """Merged (n_weights, bits), parts and the rule used, for one matrix an earlier and a later stage
    both recorded. `before`/`after`: the matrix after the earlier stage and after the later one."""
    n_orig = prev[0]
    if prev_parts is None or new_parts is None or before is None or after is None:
        return (n_orig, new[1]), new_parts, "replaced"
    if before.shape != after.shape:
        return (n_orig, new[1]), new_parts, "structured"
    if _is_sparse(prev_parts, before.numel()) and _is_quantized(new_parts, after.numel()):
        if bool((after[before == 0] == 0).all()):
            parts = Parts(prev_parts.n_values, new_parts.value_bits, prev_parts.index_bits,
                          new_parts.extra_bits)
            return (n_orig, parts.bits), parts, "sparse+quantized"
        return (n_orig, new[1]), new_parts, "replaced (zeros filled in)"
    if _is_quantized(prev_parts, before.numel()) and _is_sparse(new_parts, after.numel()):
        kept = after != 0
        if bool((after[kept] == before[kept]).all()):
            parts = Parts(new_parts.n_values, prev_parts.value_bits, new_parts.index_bits,
                          prev_parts.extra_bits)
            return (n_orig, parts.bits), parts, "quantized+sparse"
        return (n_orig, new[1]), new_parts, "replaced (values left the grid)"
    return (n_orig, new[1]), new_parts, "replaced"


def pruned_masks(model, ledger: StorageLedger) -> dict[str, torch.Tensor]:
    """Zero patterns (True = pruned) of the matrices the ledger records as sparse."""
    masks = {}
    for name, parts in ledger.parts.items():
        w = _weight(model, name)
        if w is not None and _is_sparse(parts, w.numel()):
            masks[name] = (w == 0).cpu()
    return masks


def apply_stages(ctx, methods: list, per_method: list[dict[str, Any]]) -> tuple[dict, list[dict] | None]:
    """Run the stages on `ctx`; returns (method metrics merged, per-stage records or None for one stage).

    With one stage this is just `method.apply`. With several, each stage writes a fresh ledger that is
    merged into `ctx.ledger` (module docstring); `ctx.pruned_masks` holds the zero patterns of sparse
    matrices so that a later quantizer can keep them (GPTQ does)."""
    if len(methods) == 1:
        return methods[0].apply(ctx, **per_method[0]) or {}, None
    merged_metrics: dict[str, Any] = {}
    stages: list[dict] = []
    total = ctx.ledger
    for m, kwargs in zip(methods, per_method, strict=True):
        # the matrices as the earlier stages left them, to check what the next stage keeps
        snapshot = {n: w.clone().cpu() for n in total.layers if (w := _weight(ctx.model, n)) is not None}
        ctx.ledger, ctx.earlier_ledger = StorageLedger(), total
        t0 = time.perf_counter()
        metrics = m.apply(ctx, **kwargs) or {}
        stage_time = time.perf_counter() - t0
        rules: dict[str, int] = {}
        for name, new in ctx.ledger.layers.items():
            new_parts, held = ctx.ledger.parts.get(name), ctx.ledger.held[name]  # the latest stage's view
            if name in total.layers:
                entry, parts, rule = merge_entry(total.layers[name], total.parts.get(name), new, new_parts,
                                                 snapshot.get(name), _weight(ctx.model, name))
                rules[rule] = rules.get(rule, 0) + 1
            else:
                entry, parts = new, new_parts
            total.add(name, *entry, parts=parts, held=held)
        stages.append({"method": m.name, "options": dict(kwargs), "time_s": stage_time,
                       "bits_per_weight": ctx.ledger.bits_per_weight(), "ledger_merge": rules,
                       "metrics": metrics})
        merged_metrics.update(metrics)
        ctx.pruned_masks = pruned_masks(ctx.model, total)
    ctx.ledger, ctx.earlier_ledger = total, StorageLedger()
    return merged_metrics, stages
