import pytest
import torch

from tensorpress.compressors.quantize import group_extremes, rtn_quantize
from tensorpress.formats.pack_quantized import pack_int32, unpack_int32
from tensorpress.formats.quantized import QuantScheme, dequantize


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("cols", [1, 31, 32, 33, 96, 100])
def test_pack_matches_compressed_tensors(bits, cols):
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32, unpack_from_int32

    g = torch.Generator().manual_seed(bits * 100 + cols)
    codes = torch.randint(-(1 << (bits - 1)), 1 << (bits - 1), (5, cols), generator=g, dtype=torch.int8)
    ours = pack_int32(codes, bits)
    assert torch.equal(ours, pack_to_int32(codes, bits))
    assert torch.equal(unpack_int32(ours, bits, cols), codes)
    assert torch.equal(unpack_from_int32(ours, bits, torch.Size([5, cols])), codes)
    ours0 = pack_int32(codes, bits, dim=0)
    assert torch.equal(ours0, pack_to_int32(codes, bits, packed_dim=0))
    assert torch.equal(unpack_int32(ours0, bits, 5, dim=0), codes)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_rtn_error_is_at_most_half_a_step(bits, symmetric):
    w = torch.randn(16, 100) * 0.05
    scheme = QuantScheme(bits, 32, symmetric)  # 100 = 3 groups of 32 + a short group of 4
    qw = rtn_quantize(w, scheme, torch.float32)
    assert qw.scale.shape == (16, 4)
    assert qw.codes.min() >= scheme.qmin and qw.codes.max() <= scheme.qmax
    step = qw.scale[:, torch.arange(100) // 32]
    err = (qw.dequantize() - w).abs()
    assert bool((err <= step / 2 + 1e-7).all())
    # More bits, less error: 8-bit RTN is far closer than 2-bit.
    if bits == 8:
        assert err.max() < 1e-3


def test_short_last_group_uses_its_own_range():
    w = torch.zeros(1, 70)
    w[0, :64] = 1.0
    w[0, 64:] = 0.01  # the short group has a tiny range; sharing the big group's scale would zero it
    qw = rtn_quantize(w, QuantScheme(4, 64, True), torch.float32)
    assert torch.allclose(qw.dequantize()[0, 64:], w[0, 64:], rtol=0.1)


def test_per_channel_and_asymmetric_zero_point():
    w = torch.rand(8, 50) + 1.0  # all positive: asymmetric should beat symmetric
    sym = rtn_quantize(w, QuantScheme(4, -1, True), torch.float32)
    asym = rtn_quantize(w, QuantScheme(4, -1, False), torch.float32)
    assert sym.scale.shape == (8, 1) and asym.zero.shape == (8, 1)
    assert (asym.dequantize() - w).pow(2).mean() < (sym.dequantize() - w).pow(2).mean()


def test_scales_are_rounded_before_codes_are_chosen():
    w = torch.randn(4, 64)
    qw = rtn_quantize(w, QuantScheme(4, 64, True), torch.bfloat16)
    assert qw.scale.dtype == torch.bfloat16
    # codes re-derived from the stored bf16 scale are the codes we keep
    again = torch.round(w / qw.scale.float()).clamp(-8, 7).to(torch.int8)
    assert torch.equal(again, qw.codes)


def test_all_zero_group_dequantizes_to_zero():
    w = torch.zeros(3, 64)
    qw = rtn_quantize(w, QuantScheme(4, 32, False), torch.bfloat16)
    assert torch.equal(dequantize(qw.codes, qw.scale, qw.zero, qw.scheme), w)


def test_group_extremes_ignore_padding():
    w = torch.tensor([[5.0, -1.0, 2.0]])
    lo, hi = group_extremes(w, QuantScheme(4, 2, True))
    assert lo.tolist() == [[-1.0, 2.0]] and hi.tolist() == [[5.0, 2.0]]
