"""Quantization-aware training and adapters on quantized weights: what the QAT and PEFT methods share.

- `ste_round`: rounding with the straight-through estimator (Bengio, Léonard, Courville 2013): the
  forward pass rounds, the backward pass treats rounding as the identity.
- Integer min-max grids per group of `group_size` consecutive inputs, with the conventions of the
  official GPTQ code that `quantization/rtn.py` documents (asymmetric: the range always holds 0,
  integer zero point `round(-min/scale)`; symmetric: `scale = 2·max|w|/maxq`, zero `(maxq+1)/2`):
  `minmax_grid`, `quantize_codes`, `dequantize`, and `fake_quantize_ste`, whose gradient is the
  identity inside the clip range and zero outside (the clamp's own gradient).
- `GridQuantizer`: the weight quantizer a `FakeQuantLinear` calls during QAT (grid parameters frozen
  or trainable); `QuantLinear`: integer codes (a frozen uint8 parameter) with per-group scale and zero, the
  layer a deployment stores (PEQA and EfficientQAT train its scales; QA-LoRA merges into its zeros).
- The recovery protocol every method of `qat/` and `finetuning/` follows: the same options
  (`--bits`, `--group-size`, `--max-steps`, `--time-budget`, `--lr`), the same data (the calibration
  windows, cycled), the starting point measured on the runner's own held-out windows
  (`perplexity_before`), and the same figures reported (`recovery_metrics`).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from reference_impls.common.fake_quant import FakeQuantLinear, swap_model_linears
from reference_impls.common.registry import Option
from reference_impls.common.storage import group_width
from reference_impls.common.training import TrainConfig, TrainResult, train


# ---------------------------------------------------------------- pure grid functions
def ste_round(x: torch.Tensor) -> torch.Tensor:
    """round(x) forward; d/dx = 1 backward (straight-through)."""
    return x + (torch.round(x) - x).detach()


def grouped(w: torch.Tensor, group_size: int) -> torch.Tensor:
    """(out, in) -> (out, n_groups, group) view; groups must tile the row."""
    width = group_width(group_size, w.shape[1], must_divide=True)
    return w.reshape(w.shape[0], w.shape[1] // width, width)


def minmax_grid(w: torch.Tensor, *, bits: int, group_size: int = -1,
                sym: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero), both (out, n_groups): the GPTQ/RTN min-max grid of every group of `w` (out, in)."""
    maxq = 2**bits - 1
    g = grouped(w.detach().float(), group_size)  # (out, G, gs)
    xmin = g.amin(-1).clamp(max=0)  # the grid always represents 0 exactly
    xmax = g.amax(-1).clamp(min=0)
    if sym:
        xmax = torch.maximum(xmin.abs(), xmax)
        xmin = torch.where(xmin < 0, -xmax, xmin)  # as the official code: only rows with a negative entry
    empty = (xmin == 0) & (xmax == 0)
    xmin, xmax = torch.where(empty, -1.0, xmin), torch.where(empty, 1.0, xmax)
    scale = (xmax - xmin) / maxq
    zero = torch.full_like(scale, (maxq + 1) / 2) if sym else torch.round(-xmin / scale)
    return scale, zero


def quantize_codes(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, *, bits: int) -> torch.Tensor:
    """Integer codes q = clamp(round(w/s) + z, 0, maxq), (out, in) uint8; scale/zero (out, G)."""
    g = grouped(w.detach().float(), w.shape[1] // scale.shape[1])
    q = torch.clamp(torch.round(g / scale[..., None]) + zero[..., None], 0, 2**bits - 1)
    return q.reshape(w.shape).to(torch.uint8)


def dequantize(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """W = s·(q − z) per group (out, in); differentiable in `scale` and `zero`."""
    q = grouped(codes.float(), codes.shape[1] // scale.shape[1])  # (out, G, gs)
    return ((q - zero[..., None]) * scale[..., None]).reshape(codes.shape)


def fake_quantize_ste(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, *, bits: int,
                      round_zero: bool = False) -> torch.Tensor:
    """s·(clamp(⌊w/s⌉ + z, 0, maxq) − z) with ⌊·⌉ straight-through: ∂/∂w = 1 inside the clip range,
    0 outside; gradients also reach `scale` and `zero` (LSQ-style) when they require grad.
    `round_zero`: the zero point itself is rounded with the STE (EfficientQAT's learnable zero)."""
    maxq = 2**bits - 1
    g = grouped(w, w.shape[1] // scale.shape[1])  # (out, G, gs)
    s, z = scale[..., None], zero[..., None]
    if round_zero:
        z = torch.clamp(ste_round(z), 0, maxq)
    q = torch.clamp(ste_round(g / s) + z, 0, maxq)
    return ((q - z) * s).reshape(w.shape)


# ---------------------------------------------------------------- modules
class GridQuantizer(nn.Module):
    """The weight quantizer of a QAT `FakeQuantLinear`: a fixed-shape grid whose scale and zero are
    frozen (plain STE QAT) or trained (EfficientQAT's Block-AP)."""

    def __init__(self, scale: torch.Tensor, zero: torch.Tensor, *, bits: int, train_grid: bool = False):
        super().__init__()
        self.bits = bits
        self.scale = nn.Parameter(scale.detach().clone(), requires_grad=train_grid)  # (out, G)
        self.zero = nn.Parameter(zero.detach().clone(), requires_grad=train_grid)  # (out, G)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return fake_quantize_ste(w, self.scale, self.zero, bits=self.bits, round_zero=self.zero.requires_grad)

    def codes(self, w: torch.Tensor) -> torch.Tensor:
        zero = torch.clamp(torch.round(self.zero), 0, 2**self.bits - 1)
        return quantize_codes(w, self.scale, zero, bits=self.bits)


def _as_float(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone() if t.is_floating_point() else t.detach().float()


class QuantLinear(nn.Module):
    """y = x·(s·(q − z))ᵀ + b with integer codes q (a uint8 parameter that cannot require grad: parameter
    counts and checkpoints see it, as FakeQuantLinear's weight) and per-group scale s and zero z;
    `weight` is the de-quantized matrix (for code that reads weights)."""

    def __init__(self, codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
                 bias: torch.Tensor | None, *, bits: int):
        super().__init__()
        self.bits = bits
        self.codes = nn.Parameter(codes.to(torch.uint8), requires_grad=False)  # (out, in)
        self.scale = nn.Parameter(_as_float(scale), requires_grad=False)  # (out, G)
        self.zero = nn.Parameter(_as_float(zero), requires_grad=False)  # (out, G)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.out_features, self.in_features = codes.shape

    @classmethod
    def from_weight(cls, w: torch.Tensor, bias, *, bits: int, group_size: int, sym: bool = False):
        scale, zero = minmax_grid(w, bits=bits, group_size=group_size, sym=sym)
        return cls(quantize_codes(w, scale, zero, bits=bits), scale, zero, bias, bits=bits)

    @property
    def weight(self) -> torch.Tensor:
        return dequantize(self.codes, self.scale, self.zero)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        return nn.functional.linear(x, w.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))


def quantize_model(ctx, *, bits: int, group_size: int) -> dict[str, QuantLinear]:
    """Every block linear becomes a `QuantLinear` (RTN start, asymmetric); storage into the ledger."""
    new = swap_model_linears(ctx.model, ctx.adapter, lambda _n, w, old: QuantLinear.from_weight(
        w, getattr(old, "bias", None), bits=bits, group_size=group_size))
    for name, m in new.items():
        ctx.ledger.add_quantized(name, m.out_features, m.in_features, bits=bits, group_size=group_size)
    return new


def qat_linears(ctx, *, bits: int, group_size: int, sym: bool = False, train_grid: bool = False,
                act_quant=None) -> dict[str, FakeQuantLinear]:
    """Every block linear becomes a `FakeQuantLinear` with a trainable latent weight and a
    `GridQuantizer` initialised to the RTN grid of its weight."""
    def make(_name, w, old):
        scale, zero = minmax_grid(w, bits=bits, group_size=group_size, sym=sym)
        layer = FakeQuantLinear(w, getattr(old, "bias", None), act_quant=act_quant,
                                weight_quant=GridQuantizer(scale, zero, bits=bits, train_grid=train_grid))
        layer.weight.requires_grad_(True)
        return layer

    new = swap_model_linears(ctx.model, ctx.adapter, make)
    for name, m in new.items():
        ctx.ledger.add_quantized(name, m.out_features, m.in_features, bits=bits, group_size=group_size,
                                 sym=sym)
    return new


# ---------------------------------------------------------------- the recovery protocol
def recovery_options(*, lr: float, max_steps: int = 100, time_budget: float = 120.0, bits: int = 3,
                     group_size: int = 128) -> dict[str, Option]:
    return {
        "bits": Option(bits, "weight bits (2-8)"),
        "group_size": Option(group_size, "input columns per quantization group (-1 = whole row)"),
        "max_steps": Option(max_steps, "training steps (batches of 8 calibration windows)"),
        "time_budget": Option(time_budget, "training wall-clock limit in seconds (0: none)"),
        "lr": Option(lr, "peak learning rate (AdamW, warm-up then cosine)"),
    }


RECOVERY_BENCH = [{"bits": 3}, {"bits": 2}]


def check_recovery(*, bits: int, max_steps: int, time_budget: float, lr: float, min_bits: int = 2,
                   allow_16: bool = False) -> None:
    """Validate the shared options before any model work (one-line errors naming the option)."""
    if not (min_bits <= bits <= 8 or (allow_16 and bits == 16)):
        extra = " (or 16: no quantization)" if allow_16 else ""
        raise ValueError(f"--bits must be between {min_bits} and 8{extra}, got {bits}")
    if max_steps < 1:
        raise ValueError(f"--max-steps must be at least 1, got {max_steps}")
    if time_budget < 0:
        raise ValueError(f"--time-budget must be >= 0 seconds (0: none), got {time_budget}")
    if not lr > 0:
        raise ValueError(f"--lr must be positive, got {lr}")


def trainable(params: Iterable[nn.Parameter]) -> list[nn.Parameter]:
    return [p for p in params if p.requires_grad]


def recover(ctx, params: list[nn.Parameter], loss_fn, *, max_steps: int, time_budget: float, lr: float,
            batches=None, warmup_steps: int = 10) -> TrainResult:
    """The shared loop on the calibration windows (cycled), with the run's seed."""
    from reference_impls.common.training import cycle

    cfg = TrainConfig(max_steps=max_steps, time_budget=time_budget or None, lr=lr, seed=ctx.seed,
                      warmup_steps=min(warmup_steps, max(1, max_steps // 10)))
    return train(params, loss_fn, cycle(batches if batches is not None else ctx.calibration), cfg,
                 device=ctx.device)


def recovery_metrics(*, perplexity_before: float, result: TrainResult, trainable_params: int,
                     bits: int, extra: dict | None = None) -> dict:
    """The figures every QAT/adapter run reports besides the runner's `perplexity` (after)."""
    out = {"perplexity_before": perplexity_before, "trainable_params": trainable_params, "bits": bits,
           **result.summary("train")}
    out.update(extra or {})
    return out


# ---------------------------------------------------------------- a domain shift
DATA = ("calibration", "stdlib-tests")


def stdlib_test_files(every: int = 12) -> tuple[list, list]:
    """The standard library's own test suite (`test/test_*.py`), which the project's corpus leaves out
    (so the LM never saw it): a domain shift from library code to tests. Every `every`-th file sorted
    by name; even positions for adaptation, odd ones for evaluation (never the same file)."""
    from reference_impls.common import corpus

    files = sorted((corpus.stdlib_dir() / "test").glob("test_*.py"))[::every]
    return files[0::2], files[1::2]


def stdlib_test_windows(loaded, *, n_train: int = 128, n_eval: int = 64, seed: int = 0):
    """(adaptation batches of 8 random windows, evaluation windows (n, seq)) from `stdlib_test_files`."""
    from reference_impls.common import corpus, data

    seq = data.sequence_length(loaded)

    def windows(paths):
        stream = data.token_stream(loaded.tokenizer, [corpus.read_text(p) for p in paths])
        n = stream.numel() // seq
        return stream[: n * seq].view(n, seq)

    adapt_files, eval_files = stdlib_test_files()
    adapt, held = windows(adapt_files), windows(eval_files)
    pick = torch.randperm(adapt.shape[0], generator=torch.Generator().manual_seed(seed))[:n_train]
    return [{"input_ids": adapt[pick[i : i + 8]]} for i in range(0, len(pick), 8)], held[:n_eval]


# ---------------------------------------------------------------- adapters on a quantized base
def rtn_base(ctx, *, bits: int, group_size: int) -> None:
    """Quantize every block linear in place (RTN, stored de-quantized in a plain Linear, frozen by the
    adapter library); `bits` 16 leaves the base unquantized (plain LoRA/DoRA/AdaLoRA)."""
    if bits == 16:
        return

    def quantize(name: str, w: torch.Tensor) -> torch.Tensor:
        ctx.ledger.add_quantized(name, *w.shape, bits=bits, group_size=group_size)
        scale, zero = minmax_grid(w, bits=bits, group_size=group_size)
        return dequantize(quantize_codes(w, scale, zero, bits=bits), scale, zero)

    ctx.map_linears(quantize)


def record_adapters(ctx, model: nn.Module, *, bits: int = 16) -> int:
    """One ledger entry `<linear>.adapters` per adapted block linear: its trainable (adapter)
    parameters at `bits` each (so `bits_per_weight` spreads base + adapters over all stored values, and
    `model_bits_per_param` counts every parameter once); a base left unquantized gets a 16-bit entry.
    Returns the number of adapter parameters."""
    from reference_impls.common.layerwise import block_linears

    extra: dict[str, int] = {}
    names = [name for name, _ in block_linears(model, ctx.adapter)]
    for pname, p in model.named_parameters():
        if p.requires_grad:
            owner = next((n for n in names if pname.startswith(n + ".")), None)
            if owner is None:
                raise ValueError(f"trainable parameter {pname} belongs to no block linear")
            extra[owner] = extra.get(owner, 0) + p.numel()
    for name, module in block_linears(model, ctx.adapter):
        if name not in ctx.ledger.layers:
            w = getattr(module, "base_layer", module).weight
            ctx.ledger.add(name, w.numel(), 16 * w.numel())
        if extra.get(name):
            ctx.ledger.add(f"{name}.adapters", extra[name], bits * extra[name])
    return sum(extra.values())


def train_adapters(ctx, model: nn.Module, *, before: float, bits: int, max_steps: int, time_budget: float,
                   lr: float, loss_fn=None, extra: dict | None = None, after=None,
                   data: str = "calibration") -> dict:
    """Train the parameters of `model` that require grad (the adapters) with the next-token loss,
    leave the adapters on (unmerged) for evaluation, record their storage; the result figures.
    `after(result)` runs once training stops, gradients of the last step still in place.
    `data="stdlib-tests"` adapts to the standard library's tests instead of the calibration windows and
    adds `perplexity_domain_before` / `perplexity_domain` on held-out test files (the runner's
    `perplexity` on library code then shows what the shift cost there)."""
    from reference_impls.common import evaluate
    from reference_impls.common.training import causal_lm_loss

    if data not in DATA:
        raise ValueError(f"--data must be one of {', '.join(DATA)}, got {data!r}")
    batches, domain, extra = None, None, dict(extra or {})
    if data == "stdlib-tests":
        batches, domain = stdlib_test_windows(ctx.loaded, seed=ctx.seed)
        extra.update(data=data, perplexity_domain_before=evaluate.perplexity(ctx.model, domain))
    params = trainable(model.parameters())
    model.train()
    result = recover(ctx, params, loss_fn or causal_lm_loss(model), max_steps=max_steps,
                     time_budget=time_budget, lr=lr, batches=batches)
    if after is not None:
        after(result)
    model.eval()
    if domain is not None:
        extra["perplexity_domain"] = evaluate.perplexity(ctx.model, domain)
    n = record_adapters(ctx, ctx.model)
    for p in params:
        p.requires_grad_(False)
    return recovery_metrics(perplexity_before=before, result=result, trainable_params=n, bits=bits,
                            extra=extra)
