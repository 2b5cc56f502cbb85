"""NF4 with double quantization: the 4-bit NormalFloat data type of QLoRA.

Paper: "QLoRA: Efficient Finetuning of Quantized LLMs" (Dettmers, Pagnoni, Holtzman, Zettlemoyer,
arXiv 2305.14314), section 3 ("4-bit NormalFloat Quantization", "Double Quantization").

Implemented (the storage data type; the catalog record is `qlora`):
- the 16 NF4 levels as published (Appendix of the paper, bitsandbytes' table), and their
  construction from N(0, 1) quantiles (8 positive, 7 negative, an exact zero, offset 0.9677083),
  which the tests check against the published values;
- block-wise absmax quantization: the weight is flattened row-major and cut into blocks of 64; each
  block is divided by its absmax and every value goes to the nearest NF4 level;
- double quantization: the float32 absmax constants are centred by subtracting their mean, then
  quantized to 8 bits in blocks of 256 with their own float32 absmax. The paper says "8-bit floats";
  the official bitsandbytes code uses its signed 8-bit dynamic (tree) map, which we implement here
  from its description (Dettmers 2016, arXiv 1511.04561): a sign, a run of zeros giving a decimal
  exponent 10^-k, and the remaining bits as a linear fraction in [0.1, 1];
- exact storage accounting: 4 bits per weight + 8 bits per 64 weights + 32 bits per 64·256 weights
  (+ the 32-bit mean per tensor) = 4.127 bits per weight, vs 4.5 without double quantization.

The format itself lives in `reference_impls/common/normal_float.py` (QLoRA's frozen base in
`reference_impls/finetuning/qlora.py` stores its weights in it too); this module is the PTQ entry.
Not implemented here: the LoRA adapters of QLoRA (`finetuning/qlora.py`), paged optimizers,
bitsandbytes' CUDA kernels (here the weight is de-quantized to float32 and used as is), FP4.

Agreement with bitsandbytes 0.50 (`quantize_4bit` / `dequantize_4bit`, nf4, blocksize 64, on CPU;
tests/test_nf4.py): the 4-bit codes, absmax, mean, second-level absmax and the 8-bit map are equal bit
for bit, ties included (a value exactly between two levels takes the lower one, as bitsandbytes does);
without double quantization the de-quantized weight is equal too. The 8-bit codes of the centred
absmax are the exact nearest here; bitsandbytes' CPU kernel reads them from a 2^16-entry lookup table
over [-1, 1], which now and then (~0.2% of blocks) gives a neighbour of the nearest code.

Fidelity: exact for the data type and double quantization; the `qlora` record as a whole is
represented by its quantization format only.
"""

from __future__ import annotations

import torch

from reference_impls.common.normal_float import (  # noqa: F401  (the format lives in common/)
    NF4_LEVELS,
    NF4_OFFSET,
    NF4Tensor,
    absmax_blockwise,
    absmax_blockwise_dequantize,
    dynamic_map_8bit,
    nearest_code,
    nf4_bits_per_weight,
    nf4_decode,
    nf4_encode,
    nf4_levels_from_quantiles,
    nf4_quantize,
)
from reference_impls.common.registry import Option, register


# ---------------------------------------------------------------- model level
@register(
    "nf4",
    bench=[{}],
    family="quantization",
    papers=[],  # the data type only: the `qlora` record links QLoRA itself (finetuning/qlora.py)
    fidelity="exact",
    summary="QLoRA's 4-bit NormalFloat, block 64, with double quantization of the absmax constants",
    options={
        "block_size": Option(64, "weights per absmax block"),
        "double_quant": Option(True, "quantize the absmax constants to 8 bits (block 256)"),
        "dq_block_size": Option(256, "absmax constants per second-level block"),
    },
)
def run_nf4(ctx, *, block_size, double_quant, dq_block_size) -> dict:
    def quantize(name: str, w: torch.Tensor) -> torch.Tensor:
        state = nf4_encode(w, block_size=block_size, double_quant=double_quant, dq_block_size=dq_block_size)
        ctx.ledger.add(name, w.numel(), state.bits())
        return nf4_decode(state, w.dtype)

    ctx.map_linears(quantize)
    return {}
