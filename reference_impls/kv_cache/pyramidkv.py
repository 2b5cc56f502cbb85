"""PyramidKV: "PyramidKV: Dynamic KV Cache Compression based on Pyramidal Information Funneling" (Cai,
Zhang, Gao, Liu, Li, Liu, Lu, Xiong, Dong, Hu, Xiao; arXiv 2406.02069, COLM 2025); catalog record
`pyramidkv`.

Attention is spread widely in the lower layers and concentrates on a few positions in the upper ones
("pyramidal information funneling"), so PyramidKV gives the lower layers a larger share of the same total
cache, decreasing arithmetically with depth, and selects within each layer as SnapKV does.

Implemented (fidelity: exact for the prefill compression): `pyramid_budgets`, the integer schedule of
the official `PyramidKVCluster.update_kv` (Zefan-Cai/KVCache-Factory, `pyramidkv/pyramidkv_utils.py`)
with B the average budget (window included), w the window, L layers and T the prompt length:
min = (B − w) // β, max = 2(B − w) − min (if max ≥ T − w: max = T − w, min = 2(B − w) − max),
step = (max − min) // (L − 1), layer l keeps max − l·step prefix positions plus the window; a prompt
shorter than B is kept whole and one shorter than 2(B − w) gets the uniform SnapKV budget. Because the
step is floored, the total can exceed L·B slightly (B = 64, w = 32, L = 6, T = 128: prefixes 63, 51, 39,
27, 15, 3 = 198 against 192); the measured `kv_bytes_peak` includes it. The selection in each layer is
`snapkv.snapkv_keep` (window votes, average pooling, top-k plus the window). As in the official code only
the prompt is compressed; `--decode-evict true` (not in the paper) also bounds each layer during decoding
at its long-prompt budget (the schedule without the T clamp) by SnapKV's vote over the last `window`
queries (see `snapkv.py`).
kvpress's PyramidKVPress computes the schedule in floating point with the window inside each layer's
budget and rounds per layer (its total is exactly L·B); at a given layer budget it selects the same
positions as ours (tests/test_kv_eviction.py).
Not implemented: max pooling, the merge variants and the other methods of KVCache-Factory.
"""

from __future__ import annotations

from reference_impls.common.generation import measure_on_heldout
from reference_impls.common.registry import Option, register
from reference_impls.kv_cache import snapkv


def pyramid_budgets(n_layers: int, *, budget: int, window: int, beta: int = 20,
                    seq_len: int | None = None) -> list[int]:
    """Positions kept by each layer, window included, for a prompt of `seq_len` (None: a prompt long
    enough for the full pyramid)."""
    if not 0 <= window < budget or beta < 1 or n_layers < 1:
        raise ValueError(f"need 0 ≤ window < budget, beta ≥ 1, got {window}, {budget}, {beta}")
    if seq_len is not None and seq_len < budget:
        return [seq_len] * n_layers  # nothing to compress
    if seq_len is not None and seq_len < 2 * (budget - window):
        return [budget] * n_layers  # the official code falls back to SnapKV's uniform budget
    min_num = (budget - window) // beta
    max_num = 2 * (budget - window) - min_num  # max + min = 2(B − w): the mean is B − w
    if seq_len is not None and max_num >= seq_len - window:
        max_num = seq_len - window
        min_num = 2 * (budget - window) - max_num
    step = (max_num - min_num) // (n_layers - 1) if n_layers > 1 else 0
    return [max_num - layer * step + window for layer in range(n_layers)]


class PyramidKVPolicy(snapkv.SnapKVPolicy):
    """SnapKV's selection with the pyramid's per-layer budgets."""

    def __init__(self, *, n_layers: int, beta: int = 20, **snap) -> None:
        super().__init__(**snap)
        self.n_layers, self.beta = n_layers, beta

    def layer_budget(self, layer_idx: int, seq_len: int, prefill: bool) -> int:
        budgets = pyramid_budgets(self.n_layers, budget=self.budget, window=self.window, beta=self.beta,
                                  seq_len=seq_len if prefill else None)
        return budgets[layer_idx]


@register(
    "pyramidkv", family="kv_cache", papers=["pyramidkv"], fidelity="exact",
    summary="SnapKV selection with per-layer budgets decreasing arithmetically with depth",
    options={**snapkv.OPTIONS,
             "budget": Option(64, "average cache positions kept per head over the layers, window included"),
             "beta": Option(20, "pyramid steepness: the top layer keeps (budget − window) // beta")},
    bench=[{"budget": 64}, {"budget": 128}, {"budget": 64, "decode_evict": True},
           {"budget": 128, "decode_evict": True}],
    bench_models=("causal",),
)
def run_pyramidkv(ctx, *, budget, window, kernel_size, decode_evict, beta, windows, prefill,
                  new_tokens) -> dict:
    n_layers = ctx.model.config.get_text_config(decoder=True).num_hidden_layers
    policy = PyramidKVPolicy(n_layers=n_layers, beta=beta, budget=budget, window=window,
                             kernel_size=kernel_size, decode_evict=decode_evict)
    metrics = measure_on_heldout(ctx, policy, windows=windows, prefill=prefill, new_tokens=new_tokens)
    layers = pyramid_budgets(n_layers, budget=budget, window=window, beta=beta, seq_len=prefill)
    return {**metrics, "layer_budgets_prefill": layers}
