"""NF4 + double quantization: published levels, exact round trip, storage, beats uniform int4."""

import pytest
import torch

from reference_impls.quantization.nf4 import (
    NF4_LEVELS,
    dynamic_map_8bit,
    nf4_bits_per_weight,
    nf4_decode,
    nf4_encode,
    nf4_levels_from_quantiles,
    nf4_quantize,
)


def test_levels_are_the_published_normal_quantiles():
    assert NF4_LEVELS.numel() == 16 and NF4_LEVELS[7] == 0.0
    assert NF4_LEVELS[0] == -1.0 and NF4_LEVELS[-1] == 1.0
    # the construction from N(0,1) quantiles reproduces the published table
    assert torch.allclose(nf4_levels_from_quantiles(), NF4_LEVELS, atol=1e-6)
    # asymmetric: 8 positive levels, 7 negative
    assert (NF4_LEVELS > 0).sum() == 8 and (NF4_LEVELS < 0).sum() == 7


def test_levels_round_trip_exactly():
    # a block holding every level times its absmax is represented exactly
    scale = 0.37
    w = (NF4_LEVELS.repeat(4) * scale).reshape(1, 64)
    state = nf4_encode(w, double_quant=False)
    assert torch.equal(state.codes.long(), torch.arange(16).repeat(4))
    assert torch.equal(nf4_decode(state), (NF4_LEVELS.repeat(4) * torch.tensor(scale)).reshape(1, 64))
    # decode -> encode gives back the same codes on arbitrary data
    g = torch.Generator().manual_seed(0)
    s1 = nf4_encode(torch.randn(32, 256, generator=g), double_quant=False)
    s2 = nf4_encode(nf4_decode(s1), double_quant=False)
    assert torch.equal(s1.codes, s2.codes) and torch.equal(nf4_decode(s1), nf4_decode(s2))


def test_nearest_level_by_hand():
    # block absmax 1 (last value); 0.12 lies between 0.0796 and 0.1609, nearer the former;
    # -0.6 is 0.075 from -0.5251 and 0.096 from -0.6962; 0.5 is 0.059 from 0.4407, 0.063 from 0.5626
    w = torch.tensor([0.12, -0.6, 0.5, 0.0] + [0.0] * 59 + [1.0])
    q = nf4_quantize(w.reshape(1, 64), double_quant=False).reshape(-1)
    assert q[:4].tolist() == [NF4_LEVELS[8].item(), NF4_LEVELS[2].item(), NF4_LEVELS[12].item(), 0.0]


def test_dynamic_map_and_double_quant_accuracy():
    cb = dynamic_map_8bit()
    # 127 negative values, zero, 127 positive values below 1, and +1 (as in bitsandbytes' map)
    assert cb.numel() == 256 and cb.max() == 1.0 and (cb == 0).sum() == 1
    assert (cb < 0).sum() == 127 and -1.0 < cb.min() < -0.99
    g = torch.Generator().manual_seed(1)
    w = torch.randn(256, 512, generator=g) * 0.02
    single = nf4_encode(w, double_quant=False)
    double = nf4_encode(w, double_quant=True)
    assert torch.equal(single.codes, double.codes)  # double quantization only touches the constants
    absmax_err = (double.dequantize_absmax() - single.absmax).abs() / single.absmax
    assert absmax_err.max() < 0.02
    w_single, w_double = nf4_decode(single), nf4_decode(double)
    assert (w_double - w).norm() < 1.02 * (w_single - w).norm()


def test_exact_bits_per_weight():
    assert nf4_bits_per_weight(4096 * 4096, double_quant=False) == 4.5
    # 4 + 8/64 + 32/(64·256) = 4.126953..., plus the per-tensor mean
    assert abs(nf4_bits_per_weight(4096 * 4096) - (4 + 8 / 64 + 32 / (64 * 256) + 32 / 4096**2)) < 1e-12
    state = nf4_encode(torch.randn(128, 512))
    assert state.bits() / (128 * 512) == nf4_bits_per_weight(128 * 512)


def test_nf4_beats_uniform_int4_on_normal_weights():
    g = torch.Generator().manual_seed(2)
    w = torch.randn(512, 512, generator=g)
    blocks = w.reshape(-1, 64)
    absmax = blocks.abs().amax(1, keepdim=True)
    # symmetric absmax int4 with the same block size and the same constant storage
    int4 = (torch.round(blocks / absmax * 7).clamp(-7, 7) / 7 * absmax).reshape(w.shape)
    nf4 = nf4_quantize(w, double_quant=False)
    assert (nf4 - w).pow(2).mean() < 0.8 * (int4 - w).pow(2).mean()


def test_ties_go_to_the_lower_level():
    # every exact float32 midpoint between neighbouring levels (block absmax 1) takes the lower level,
    # as bitsandbytes does; just above the midpoint takes the upper
    mids = (NF4_LEVELS[1:] + NF4_LEVELS[:-1]) / 2
    w = torch.cat([mids, torch.nextafter(mids, torch.tensor(2.0)), torch.ones(1), torch.zeros(33)])
    codes = nf4_encode(w.reshape(1, 64), double_quant=False).codes.long()
    assert codes[:15].tolist() == list(range(15))
    assert codes[15:30].tolist() == list(range(1, 16))


# ---------------------------------------------------------------- against bitsandbytes
def _bnb_case(name):
    g = torch.Generator().manual_seed(7)
    if name == "normal":
        return torch.randn(256, 1024, generator=g) * 0.02
    if name == "unit":
        return torch.randn(128, 512, generator=g)
    if name == "ragged":  # numel not a multiple of 64: a short last block
        return torch.randn(7, 100, generator=g)
    # tie-heavy: every block is a power-of-two absmax times exact level midpoints (and the absmax)
    mids = (NF4_LEVELS[1:] + NF4_LEVELS[:-1]) / 2
    w = mids[torch.randint(0, 15, (64, 1024), generator=g)]
    w[:, ::64] = 1.0
    return w * torch.exp2(torch.randint(-8, 3, (64, 1), generator=g).float())


@pytest.mark.parametrize("compress_statistics", [False, True])
@pytest.mark.parametrize("case", ["normal", "unit", "ragged", "ties"])
def test_matches_bitsandbytes(case, compress_statistics):
    F = pytest.importorskip("bitsandbytes.functional", reason="bitsandbytes (dev extra) not installed")
    w = _bnb_case(case)
    packed, st = F.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=compress_statistics)
    ours = nf4_encode(w, double_quant=compress_statistics)
    bnb_codes = torch.stack([packed.view(-1) >> 4, packed.view(-1) & 15], 1).reshape(-1)[: w.numel()]
    assert torch.equal(bnb_codes.long(), ours.codes.long())  # every 4-bit code, ties included
    assert torch.equal(st.code, NF4_LEVELS)
    bnb_w = F.dequantize_4bit(packed, st)
    if not compress_statistics:
        assert torch.equal(st.absmax, ours.absmax)
        assert torch.equal(bnb_w, nf4_decode(ours))
        return
    # double quantization: same 8-bit map, same mean, same second-level absmax
    assert torch.equal(st.state2.code, dynamic_map_8bit())
    assert st.offset.item() == ours.absmax_mean
    assert torch.equal(st.state2.absmax, ours.absmax_scale)
    # the 8-bit codes of the centred absmax agree except where bitsandbytes' CPU kernel (a 2^16-entry
    # lookup table over [-1, 1]) lands on a neighbour of the nearest code; ours is always the nearest
    same = st.absmax.long() == ours.absmax_codes.long()
    assert same.float().mean() > 0.99
    cb = dynamic_map_8bit()
    centred = nf4_encode(w, double_quant=False).absmax - ours.absmax_mean
    scale = ours.absmax_scale.repeat_interleave(256)[: centred.numel()]
    x = (centred * (1 / scale)).clamp(-1, 1)
    d_ours = (x - cb[ours.absmax_codes.long()]).abs()
    d_bnb = (x - cb[st.absmax.long()]).abs()
    assert (d_ours <= d_bnb).all() and (d_ours[~same] < d_bnb[~same]).all()
    # and the de-quantized weights agree in every block whose absmax code agrees
    same_w = same.repeat_interleave(64)[: w.numel()].reshape(w.shape)
    assert torch.equal(bnb_w[same_w], nf4_decode(ours)[same_w])
