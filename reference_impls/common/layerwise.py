"""Sequential block-by-block calibration capture, written once for every method.

The scheme of the official GPTQ code (`llama_sequential` in IST-DASLab/gptq): catch the inputs of
the first block by stopping the model there, then for each block in turn

1. run the block on its calibration inputs with hooks that accumulate per-linear statistics,
2. hand the block, its linears and their statistics to the method, which compresses them in place,
3. run the now-compressed block again; its outputs are the next block's inputs.

So every block is calibrated on activations that already carry the error of the compressed blocks
before it. Statistics per linear (input dimension `in`, over the n calibration tokens):

- `hessian`:  H = 2/n · Σ x xᵀ, (in, in), float32 (n counts tokens; GPTQ and SparseGPT are invariant
  to the scale of H, since damping is relative to its mean diagonal);
- `input_norm`: ‖X[:, j]‖₂, (in,) (Wanda's activation norm);
- `act_max`: max |X[:, j]|, (in,) (SmoothQuant);
- `act_mean_abs`: mean |X[:, j]|, (in,) (AWQ's activation salience);
- `act_mean`, `act_var`: mean and unbiased variance (n - 1) of X[:, j], (in,) (FLAP's fluctuation,
  its bias compensation, DSnoT's expected error), merged batch by batch in float64 with Chan et al.'s
  pairwise update, so no large sum of squares is ever subtracted.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from reference_impls.common.adapters import Adapter, get_weight, set_weight

STAT_NAMES = ("hessian", "input_norm", "act_max", "act_mean_abs", "act_mean", "act_var")


class _StopForward(Exception):
    """Raised by the capture hook once the first block's inputs are stored."""


@dataclass
class LinearStats:
    """Running statistics of one linear layer's inputs."""

    in_features: int
    want: frozenset[str]
    device: torch.device
    n_tokens: int = 0
    hessian: torch.Tensor | None = None
    sq_sum: torch.Tensor | None = None
    act_max: torch.Tensor | None = None
    abs_sum: torch.Tensor | None = None
    mean64: torch.Tensor | None = None  # running mean, float64
    m2: torch.Tensor | None = None  # running Σ (x - mean)², float64

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, self.in_features).float()  # (m, in)
        m = x.shape[0]
        n_new = self.n_tokens + m
        if "hessian" in self.want:
            if self.hessian is None:
                self.hessian = torch.zeros(self.in_features, self.in_features, device=x.device)
            # Running mean keeps H = 2/n Σ x xᵀ without ever summing huge numbers.
            self.hessian.mul_(self.n_tokens / n_new).addmm_(x.t(), x, alpha=2.0 / n_new)
        if "input_norm" in self.want:
            sq = x.pow(2).sum(0)
            self.sq_sum = sq if self.sq_sum is None else self.sq_sum + sq
        if "act_max" in self.want:
            mx = x.abs().amax(0)
            self.act_max = mx if self.act_max is None else torch.maximum(self.act_max, mx)
        if "act_mean_abs" in self.want:
            ab = x.abs().sum(0)
            self.abs_sum = ab if self.abs_sum is None else self.abs_sum + ab
        if self.want & {"act_mean", "act_var"}:
            self._add_moments(x.double(), m)
        self.n_tokens = n_new

    def _add_moments(self, x: torch.Tensor, m: int) -> None:
        mean, m2 = x.mean(0), (x - x.mean(0)).pow(2).sum(0)  # this batch's moments, (in,)
        if self.mean64 is None:
            self.mean64, self.m2 = mean, m2
            return
        n_new = self.n_tokens + m
        delta = mean - self.mean64
        self.mean64 = self.mean64 + delta * (m / n_new)
        self.m2 = self.m2 + m2 + delta.pow(2) * (self.n_tokens * m / n_new)

    @property
    def input_norm(self) -> torch.Tensor:
        return self.sq_sum.sqrt()

    @property
    def act_mean_abs(self) -> torch.Tensor:
        return self.abs_sum / self.n_tokens

    @property
    def act_mean(self) -> torch.Tensor:
        return self.mean64.float()

    @property
    def act_var(self) -> torch.Tensor:
        return (self.m2 / max(self.n_tokens - 1, 1)).float()


def _first_tensor(out):
    return out[0] if isinstance(out, tuple) else out


@dataclass
class BlockContext:
    """What a method sees of one block while the walk is there."""

    index: int
    name: str  # dotted path of the block, e.g. "model.layers.3"
    block: nn.Module
    adapter: Adapter
    linears: dict[str, nn.Module]  # dotted name inside the block -> module
    stats: dict[str, LinearStats]
    inputs: list[torch.Tensor]  # (batch, seq, hidden) per calibration batch, from the compressed prefix
    kwargs: list[dict] = field(default_factory=list)  # the block's other forward arguments, per batch

    @torch.no_grad()
    def run(self, block: nn.Module | None = None) -> list[torch.Tensor]:
        """Outputs of `block` (default: this block, as it is now) on every calibration batch."""
        block = block or self.block
        return [_first_tensor(block(x, **kw)) for x, kw in zip(self.inputs, self.kwargs, strict=True)]

    def output_mse(self, i: int, targets: list[torch.Tensor]) -> torch.Tensor:
        """Mean squared error between this block's output on batch i and `targets[i]`, differentiable:
        the block-wise reconstruction loss ‖F(W, X) − F(Q(W), X)‖² of OmniQuant, AQLM, EfficientQAT."""
        out = _first_tensor(self.block(self.inputs[i], **self.kwargs[i]))
        return (out.float() - targets[i].float()).pow(2).mean()

    @torch.no_grad()
    def mean_output_mse(self, targets: list[torch.Tensor]) -> float:
        """`output_mse` averaged over every calibration batch."""
        return sum(self.output_mse(i, targets).item() for i in range(len(targets))) / len(targets)

    @torch.no_grad()
    def linear_inputs(self, names: Iterable[str]) -> dict[str, list[torch.Tensor]]:
        """The raw inputs of some linears on every batch (for methods that search on real activations)."""
        captured: dict[str, list[torch.Tensor]] = {n: [] for n in names}
        handles = [
            self.linears[n].register_forward_hook(
                lambda _m, inp, _o, n=n: captured[n].append(inp[0].detach())
            )
            for n in captured
        ]
        try:
            self.run()
        finally:
            for h in handles:
                h.remove()
        return captured

    def weight(self, name: str) -> torch.Tensor:
        """A float32 copy of a linear's weight in (out, in) layout."""
        return get_weight(self.linears[name]).detach().clone().float()

    def set_weight(self, name: str, weight: torch.Tensor) -> None:
        set_weight(self.linears[name], weight)


@torch.no_grad()
def capture_first_block_inputs(model: nn.Module, adapter: Adapter, batches: list[dict]) -> tuple[list, list]:
    """Run the model on each batch until block 0; return its hidden-state inputs and other kwargs."""
    block0 = adapter.blocks(model)[0]
    inputs, kwargs = [], []

    signature = inspect.signature(block0.forward)
    first = next(iter(signature.parameters))  # the hidden-states parameter

    def hook(_module, args, kw):
        # Name every argument (GPT-2 and BERT pass masks positionally) so blocks are re-run by keyword.
        bound = signature.bind(*args, **kw)
        named = dict(bound.arguments)
        extra = named.pop(next(n for n, p in signature.parameters.items() if p.kind is p.VAR_KEYWORD), {}) \
            if any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()) else {}
        hidden = named.pop(first)
        inputs.append(hidden.detach())
        kwargs.append({**named, **extra})
        raise _StopForward

    handle = block0.register_forward_pre_hook(hook, with_kwargs=True)
    device = next(model.parameters()).device
    try:
        for batch in batches:
            feed = {k: v.to(device) for k, v in batch.items()}
            if adapter.causal:
                feed["use_cache"] = False
            try:
                model(**feed)
            except _StopForward:
                pass
    finally:
        handle.remove()
    return inputs, kwargs


@torch.no_grad()
def walk_blocks(model: nn.Module, adapter: Adapter, batches: list[dict],
                process_block: Callable[[BlockContext], None], *, stats: Iterable[str] = ("hessian",),
                progress: Callable[[int, int], None] | None = None) -> None:
    """Calibrate and compress `model` block by block; `process_block` edits each block in place."""
    want = frozenset(stats)
    unknown = want - set(STAT_NAMES)
    if unknown:
        raise ValueError(f"unknown statistics {sorted(unknown)}; available: {', '.join(STAT_NAMES)}")
    inputs, kwargs = capture_first_block_inputs(model, adapter, batches)
    blocks = adapter.blocks(model)
    for i, block in enumerate(blocks):
        linears = adapter.linears(block)
        ctx = BlockContext(index=i, name=f"{adapter.blocks_path}.{i}", block=block, adapter=adapter,
                           linears=linears, stats={}, inputs=inputs, kwargs=kwargs)
        if want:
            device = inputs[0].device
            ctx.stats = {n: LinearStats(get_weight(m).shape[1], want, device) for n, m in linears.items()}
            handles = [m.register_forward_hook(lambda _m, inp, _o, s=ctx.stats[n]: s.add(inp[0]))
                       for n, m in linears.items()]
            try:
                ctx.run()
            finally:
                for h in handles:
                    h.remove()
        process_block(ctx)
        inputs = ctx.run()  # the compressed block's outputs feed the next block
        ctx.stats.clear()  # Hessians of large layers are big: free them before the next block
        if progress is not None:
            progress(i + 1, len(blocks))


def block_linears(model: nn.Module, adapter: Adapter):
    """(full_name, module) for every block linear, block by block."""
    for i, block in enumerate(adapter.blocks(model)):
        for name, module in adapter.linears(block).items():
            yield f"{adapter.blocks_path}.{i}.{name}", module


def map_linears(model: nn.Module, adapter: Adapter, fn: Callable[[str, torch.Tensor], torch.Tensor]) -> None:
    """Apply a calibration-free weight transform `fn(full_name, weight_out_in) -> weight` to every
    block linear."""
    for name, module in block_linears(model, adapter):
        set_weight(module, fn(name, get_weight(module).detach().clone().float()))
