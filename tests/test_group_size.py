"""One `--group-size` convention for every grid quantizer: -1 = whole row, 0 and the like rejected."""

import pytest
import torch

from reference_impls.common.storage import group_width, n_groups
from reference_impls.pruning.sparsegpt import sparsegpt_prune
from reference_impls.quantization.awq import awq_quantize
from reference_impls.quantization.gptq import gptq_quantize
from reference_impls.quantization.hqq import hqq_quantize
from reference_impls.quantization.rtn import rtn_quantize

W = torch.randn(8, 48, generator=torch.Generator().manual_seed(0))
X = torch.randn(64, 48, generator=torch.Generator().manual_seed(1))
H = 2 * X.T @ X / 64

QUANTIZERS = {
    "rtn": lambda g: rtn_quantize(W, bits=4, group_size=g),
    "gptq": lambda g: gptq_quantize(W, H, bits=4, group_size=g),
    "awq": lambda g: awq_quantize(W, X, bits=4, group_size=g),
    "hqq": lambda g: hqq_quantize(W, bits=4, group_size=g),
    "sparsegpt+gptq": lambda g: sparsegpt_prune(W, H, sparsity=0.5, bits=4, group_size=g),
}


def test_group_width():
    assert group_width(-1, 48) == 48 and group_width(16, 48) == 16 and group_width(64, 48) == 48
    assert group_width(32, 48) == 32 and n_groups(48, 32) == 2  # a short last group where allowed
    with pytest.raises(ValueError, match="--group-size 32 must divide"):
        group_width(32, 48, must_divide=True)


@pytest.mark.parametrize("name", sorted(QUANTIZERS))
@pytest.mark.parametrize("bad", [0, -2])
def test_invalid_group_size_is_one_clear_error(name, bad):
    with pytest.raises(ValueError, match="^--group-size must be -1 \\(whole row\\) or a positive integer"):
        QUANTIZERS[name](bad)


@pytest.mark.parametrize("name", sorted(QUANTIZERS))
def test_minus_one_is_the_whole_row(name):
    assert torch.equal(QUANTIZERS[name](-1), QUANTIZERS[name](48))


@pytest.mark.parametrize("name", ["awq", "hqq"])
def test_groups_that_must_tile_the_row(name):
    with pytest.raises(ValueError, match="--group-size 32 must divide the 48 input features"):
        QUANTIZERS[name](32)
