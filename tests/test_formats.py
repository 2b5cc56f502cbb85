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


# ---------------------------------------------------------------- FP8 against torch's casts, bit for bit
def _fp8_inputs(fmt):
    g = torch.Generator().manual_seed(4)
    vals = torch.arange(256, dtype=torch.uint8).view(TORCH_DTYPES[fmt]).float()
    finite = vals[torch.isfinite(vals)]
    s = finite.unique().sort().values
    mids = (s[1:] + s[:-1]) / 2
    rand = (
        torch.exp2(torch.empty(100_000).uniform_(-20, 17, generator=g))
        * torch.randn(100_000, generator=g).sign()
    )
    special = torch.tensor(
        [math.inf, -math.inf, math.nan, -math.nan, 0.0, -0.0, 1e30, -1e30, 464.0, 480.0, 61440.0]
    )
    return torch.cat([finite, mids, torch.nextafter(mids, s[-1].expand_as(mids)), rand, special])


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
def test_encode_matches_torch_bits_in_both_modes(fmt):
    x = _fp8_inputs(fmt)
    dt, top = TORCH_DTYPES[fmt], {"e4m3": 448.0, "e5m2": 57344.0}[fmt]
    torch_bits = x.to(dt).view(torch.uint8).long()
    clamped_bits = x.clamp(-top, top).to(dt).view(torch.uint8).long()  # clamp keeps NaN
    sat, nosat = fp_encode(x, fmt, saturate=True), fp_encode(x, fmt, saturate=False)
    # every value that rounds into the finite range, +-0, subnormals and NaN (sign kept): both modes
    overflow = ~torch.isnan(x) & ~(fp_quantize(x, fmt, saturate=False).abs() <= top)  # NaN or inf
    assert overflow.sum() > 100
    assert torch.equal(sat[~overflow], torch_bits[~overflow])
    assert torch.equal(nosat[~overflow], torch_bits[~overflow])
    # saturate=True is torch's cast of the clamped value everywhere
    assert torch.equal(sat, clamped_bits)
    sign = torch.signbit(x[overflow]).long() << 7
    if fmt == "e4m3":  # torch saturates E4M3 (no inf): equal to saturate=True; non-saturating gives NaN
        assert torch.equal(sat, torch_bits)
        assert torch.equal(nosat[overflow], 0x7F | sign)
    else:  # torch overflows E5M2 to inf: equal to saturate=False; saturating gives +-57344
        assert torch.equal(nosat, torch_bits)
        assert torch.equal(sat[overflow], 0x7B | sign)
    # and the values: fp_quantize is fp_decode of the codes (NaN where the code is NaN)
    for mode, code in ((True, sat), (False, nosat)):
        q, d = fp_quantize(x, fmt, saturate=mode), fp_decode(code, fmt)
        assert torch.equal(torch.isnan(q), torch.isnan(d)) and torch.equal(
            q[~torch.isnan(q)], d[~torch.isnan(d)]
        )


# ------------------------------------------------------- MX against a float64 transcription of the spec
# microxcaling (github.com/microsoft/microxcaling) is not on PyPI, so the oracle is the OCP MX v1.0 spec
# written out here in float64 with no code shared with the implementation: element value sets from
# their exponent/mantissa definitions (section 5.3), shared exponent floor(log2 amax) - emax_elem clamped
# to the E8M0 range (6.3), elements rounded to nearest, ties to the even code, saturating.
SPEC_ELEMENTS = {  # name: (exponent bits, mantissa bits, bias, largest magnitude)
    "mxfp8": (4, 3, 7, 448.0),
    "mxfp8_e5m2": (5, 2, 15, 57344.0),
    "mxfp6": (2, 3, 1, 7.5),
    "mxfp6_e3m2": (3, 2, 3, 28.0),
    "mxfp4": (2, 1, 1, 6.0),
}


def _spec_magnitudes(ebits, mbits, bias, top):
    out = []
    for code in range(2 ** (ebits + mbits)):
        e, m = code >> mbits, code & (2**mbits - 1)
        v = 2.0 ** (1 - bias) * m / 2**mbits if e == 0 else 2.0 ** (e - bias) * (1 + m / 2**mbits)
        if v <= top:
            out.append(v)
    return out  # ascending, index = code


def _spec_round(a, mags):
    if a >= mags[-1]:
        return mags[-1]
    i = max(k for k, v in enumerate(mags) if v <= a)
    lo, hi = a - mags[i], mags[i + 1] - a
    return mags[i] if lo < hi or (lo == hi and i % 2 == 0) else mags[i + 1]


def _spec_mx(block, fmt):
    amax = max(abs(v) for v in block)
    if amax == 0:
        return [0.0] * len(block), -127
    if fmt == "mxint8":
        emax = 0
    else:
        ebits, mbits, bias, top = SPEC_ELEMENTS[fmt]
        emax = math.floor(math.log2(top))
    e = min(max(math.frexp(amax)[1] - 1 - emax, -127), 127)  # floor(log2 amax), exactly
    out = []
    for v in block:
        p = v / 2.0**e
        if fmt == "mxint8":
            q = min(max(round(p * 64), -127), 127) / 64  # Python's round: half to even
        else:
            q = math.copysign(_spec_round(abs(p), _spec_magnitudes(ebits, mbits, bias, top)), p)
        out.append(q * 2.0**e)
    return out, e


@pytest.mark.parametrize("fmt", ["mxfp4", "mxfp6", "mxfp6_e3m2", "mxfp8", "mxfp8_e5m2", "mxint8"])
def test_mx_matches_float64_spec_transcription(fmt):
    g = torch.Generator().manual_seed(5)
    rand = torch.randn(6, 64, generator=g) * torch.exp2(torch.randint(-12, 12, (6, 64), generator=g).float())
    # tie-heavy blocks: the largest magnitude of the element format (fixing the scale) followed by
    # midpoints between neighbouring element values, and a value past the largest in the same binade
    # (saturation; for MXINT8 127.5/64, also a tie)
    ties = []
    for k in range(2):
        if fmt == "mxint8":
            mags = [i / 64 for i in range(128)]
        else:
            mags = _spec_magnitudes(*SPEC_ELEMENTS[fmt])
        mids = [(a + b) / 2 for a, b in zip(mags, mags[1:], strict=False)]
        row = (
            [mags[-1]]
            + [(-1) ** i * mids[(i * 7 + k) % len(mids)] for i in range(62)]
            + [(mags[-1] + 2.0 ** (math.floor(math.log2(mags[-1])) + 1)) / 2]
        )
        ties.append([v * 2.0 ** (3 * k - 2) for v in row])
    x = torch.cat([rand, torch.tensor(ties), torch.zeros(1, 64), torch.full((1, 64), 2.0**-130)])
    got = mx_quantize(x, fmt)
    _, shared = mx_encode(x, fmt)
    for r in range(x.shape[0]):
        for b in range(2):
            want, e = _spec_mx([float(v) for v in x[r, 32 * b : 32 * b + 32].tolist()], fmt)
            assert got[r, 32 * b : 32 * b + 32].double().tolist() == want, (r, b)
            assert int(shared[r, b, 0].item()) == e
