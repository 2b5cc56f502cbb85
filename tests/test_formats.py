"""FP8 and MX simulated formats: hand-computed values, torch's float8 dtypes as an oracle."""

import math

import pytest
import torch

from reference_impls.formats import fp8_quantize, fp_decode, fp_encode, fp_quantize, mx_encode, mx_quantize
from reference_impls.formats.mx import mx_bits_per_element

TORCH_DTYPES = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}


@pytest.mark.parametrize(
    ("value", "code"),
    [
        (0.0, 0x00),
        (-0.0, 0x80),
        (1.0, 0x38),  # exponent field 7 = bias
        (-2.0, 0xC0),
        (1.125, 0x39),  # 1 + 1/8: last mantissa bit
        (448.0, 0x7E),  # largest normal: 1.75 · 2^8 (S.1111.111 is NaN)
        (2.0**-6, 0x08),  # smallest normal
        (2.0**-9, 0x01),  # smallest subnormal: 2^-6 · 1/8
        (7 * 2.0**-9, 0x07),  # largest subnormal
    ],
)
def test_e4m3_hand_computed(value, code):
    x = torch.tensor([value])
    assert fp_encode(x, "e4m3").item() == code
    assert fp_decode(torch.tensor([code]), "e4m3").item() == value


@pytest.mark.parametrize(
    ("value", "code"),
    [(1.0, 0x3C), (57344.0, 0x7B), (2.0**-14, 0x04), (2.0**-16, 0x01), (math.inf, 0x7C), (-math.inf, 0xFC)],
)
def test_e5m2_hand_computed(value, code):
    assert fp_encode(torch.tensor([value]), "e5m2", saturate=False).item() == code
    assert fp_decode(torch.tensor([code]), "e5m2").item() == value


def test_rounding_saturation_and_underflow_by_hand():
    # E4M3 around 1.0 has spacing 1/8: 1.0625 is a tie -> even mantissa (1.0); 1.1875 -> 1.25
    x = torch.tensor([1.0625, 1.1875, 464.0, 500.0, 1e9, -1e9, 2.0**-10, 3 * 2.0**-11, math.inf])
    want = torch.tensor([1.0, 1.25, 448.0, 448.0, 448.0, -448.0, 0.0, 2.0**-9, 448.0])
    assert torch.equal(fp_quantize(x, "e4m3"), want)
    # without saturation E4M3 overflows to NaN (it has no infinity) and E5M2 to inf
    assert torch.isnan(fp_quantize(torch.tensor([500.0]), "e4m3", saturate=False)).all()
    assert fp_quantize(torch.tensor([61440.0]), "e5m2", saturate=False).item() == math.inf
    assert fp_quantize(torch.tensor([61439.0]), "e5m2", saturate=False).item() == 57344.0
    assert torch.isnan(fp_quantize(torch.tensor([math.nan]), "e4m3")).all()


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
def test_decode_every_code_matches_torch(fmt):
    codes = torch.arange(256, dtype=torch.uint8)
    want = codes.view(TORCH_DTYPES[fmt]).float()
    got = fp_decode(codes, fmt)
    assert torch.equal(torch.isnan(got), torch.isnan(want))
    assert torch.equal(got[~torch.isnan(got)], want[~torch.isnan(want)])
    # every non-NaN code round-trips through encode (including -0)
    finite = ~torch.isnan(got)
    assert torch.equal(fp_encode(got[finite], fmt, saturate=False), codes[finite].long())


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
def test_quantize_matches_torch_cast(fmt):
    g = torch.Generator().manual_seed(0)
    # log-uniform magnitudes over the whole range, from below the smallest subnormal to overflow
    x = (
        torch.exp2(torch.empty(200_000).uniform_(-20, 17, generator=g))
        * torch.randn(200_000, generator=g).sign()
    )
    # and every midpoint between neighbouring codes, where ties-to-even decides
    vals = torch.arange(256, dtype=torch.uint8).view(TORCH_DTYPES[fmt]).float()
    vals = vals[torch.isfinite(vals)].sort().values
    x = torch.cat([x, (vals[1:] + vals[:-1]) / 2])
    # torch saturates E4M3 (it has no inf) and overflows E5M2 to inf
    got = fp_quantize(x, fmt, saturate=(fmt == "e4m3"))
    want = x.to(TORCH_DTYPES[fmt]).float()
    assert torch.equal(got, want)


def test_fp8_scaled_quantizer_error_and_scale():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(64, 256, generator=g) * torch.rand(64, 1, generator=g) * 10
    q = fp8_quantize(w, fmt="e4m3", granularity="channel")
    # each row's largest magnitude is exactly representable (it maps to 448)
    assert torch.allclose(q.abs().amax(1), w.abs().amax(1), rtol=1e-6)
    rel = (q - w).norm() / w.norm()
    # 3 mantissa bits: relative error per element at most 2^-4; RMS well below that
    assert 0.005 < rel < 2.0**-4
    assert (fp8_quantize(w, fmt="e5m2", granularity="channel") - w).norm() / w.norm() > rel


def test_mxfp4_block_by_hand():
    # amax 3 -> floor(log2 3) = 1, minus emax(E2M1) = 2 -> scale 2^-1; elements x/0.5 on the E2M1 grid
    x = torch.tensor([3.0, 0.26, -1.3, 0.0] + [0.0] * 28)
    elements, shared_exp = mx_encode(x, "mxfp4")
    assert shared_exp.item() == -1
    # 6 -> 6, 0.52 -> 0.5, -2.6 -> -3 (spacing 1 between 2 and 4), 0 -> 0
    assert elements[0, :4].tolist() == [6.0, 0.5, -3.0, 0.0]
    assert mx_quantize(x, "mxfp4")[:4].tolist() == [3.0, 0.25, -1.5, 0.0]
    # saturation: 7 lands in E2M1's top binade (scale 1) but exceeds its max 6
    assert mx_quantize(torch.tensor([7.0] + [1.0] * 31), "mxfp4")[0].item() == 6.0


def test_mxint8_and_mxfp6_by_hand():
    x = torch.tensor([1.5, -0.7, 0.01, 1e-3] + [0.0] * 28)
    # amax 1.5 -> exponent 0 (emax of INT8 is 0): elements k/64 with |k| <= 127
    assert mx_quantize(x, "mxint8")[:4].tolist() == [1.5, -45 / 64, 1 / 64, 0.0]
    # MXFP6 E2M3: emax 2 -> scale 2^-2; 0.7/0.25 = 2.8 -> 2.75 (spacing 1/4 in [2, 4))
    assert mx_quantize(x, "mxfp6")[1].item() == -2.75 * 0.25


@pytest.mark.parametrize("fmt", ["mxfp4", "mxfp6", "mxfp6_e3m2", "mxint8", "mxfp8"])
def test_mx_matches_literal_per_block_transcription(fmt):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(8, 96, generator=g) * torch.exp2(torch.randint(-8, 8, (8, 96), generator=g).float())
    got = mx_quantize(x, fmt)
    elements, shared_exp = mx_encode(x, fmt)
    spec = {
        "mxfp4": ("e2m1", 2),
        "mxfp6": ("e2m3", 2),
        "mxfp6_e3m2": ("e3m2", 4),
        "mxint8": (None, 0),
        "mxfp8": ("e4m3", 8),
    }
    elem, emax = spec[fmt]
    want = torch.empty_like(x)
    for r in range(8):
        for b in range(0, 96, 32):
            blk = x[r, b : b + 32].double()
            e = math.floor(math.log2(blk.abs().max().item())) - emax
            scaled = blk / 2.0**e
            if elem is None:
                q = torch.clamp(torch.round(scaled * 64), -127, 127) / 64
            else:
                q = fp_quantize(scaled, elem)
            want[r, b : b + 32] = (q * 2.0**e).float()
            # the stored E8M0 byte decodes to the same power of two in torch's e8m0 dtype
            byte = torch.tensor([int(shared_exp[r, b // 32, 0].item()) + 127], dtype=torch.uint8)
            assert byte.view(torch.float8_e8m0fnu).float().item() == 2.0**e
    assert torch.equal(got, want)
    assert elements.shape == (8, 3, 32)


def test_mx_error_ordering_and_bits():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(128, 512, generator=g)
    err = {f: ((mx_quantize(w, f) - w).norm() / w.norm()).item() for f in ["mxfp4", "mxfp6", "mxint8"]}
    assert err["mxint8"] < err["mxfp6"] < err["mxfp4"] < 0.2
    assert mx_bits_per_element("mxfp4") == 4.25
    assert mx_bits_per_element("mxfp6") == 6.25
    assert mx_bits_per_element("mxint8") == 8.25
    # a ragged last block is quantized on its own
    assert mx_quantize(torch.randn(3, 40, generator=g), "mxfp4").shape == (3, 40)
