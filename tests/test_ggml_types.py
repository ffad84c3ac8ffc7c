"""GGML block types: our packed bytes, read back by gguf-py's dequantizer, are bit-for-bit the weights
tensorpress computes with; the weighted fit is no worse than gguf-py's own reference quantizers."""

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType
from gguf.quants import dequantize, quantize

from tensorpress.compressors.ggml_fit import quantize_rtn
from tensorpress.formats.ggml_types import TYPES, ggml_type


def _weights(rows: int = 8, cols: int = 512, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(rows, cols, generator=g) * 0.02 * (1 + 3 * torch.rand(1, cols, generator=g))
    W[0, :40] = 0  # an all-zero block / sub-block
    W[1, 5] = 0.5  # an outlier
    W[2, 256:288] = -0.01  # a constant block
    return W


@pytest.mark.parametrize("name", list(TYPES))
def test_packed_bytes_dequantize_bit_exact(name):
    t = TYPES[name]
    W = _weights()
    h = torch.rand(W.shape[1], generator=torch.Generator().manual_seed(1)) + 0.1
    qw = quantize_rtn(t, W, h)
    raw = qw.to_bytes()
    assert raw.shape == (W.shape[0], W.shape[1] // t.block * t.type_size)
    ref = dequantize(raw, GGMLQuantizationType(t.ggml_id))
    ours = qw.dequantize().numpy()
    assert ref.shape == ours.shape
    assert np.array_equal(ref.view(np.uint32), ours.view(np.uint32))
    assert qw.codes.min() >= t.qmin and qw.codes.max() <= t.qmax


@pytest.mark.parametrize("name", ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"])
def test_fit_beats_reference_quantizer(name):
    t = TYPES[name]
    W = _weights(64, 1024, seed=2)
    ours = float(((quantize_rtn(t, W).dequantize() - W) ** 2).sum())
    qt = GGMLQuantizationType(t.ggml_id)
    ref = dequantize(quantize(W.numpy(), qt), qt)
    theirs = float(((torch.from_numpy(ref) - W) ** 2).sum())
    assert ours < theirs


def test_importance_weighting_moves_error_away_from_important_columns():
    t = TYPES["Q4_K"]
    W = _weights(32, 256, seed=3)
    h = torch.ones(256)
    h[:64] = 100.0
    plain = quantize_rtn(t, W).dequantize() - W
    weighted = quantize_rtn(t, W, h).dequantize() - W
    assert float((weighted[:, :64] ** 2).sum()) < float((plain[:, :64] ** 2).sum())


def test_bits_per_weight_and_lookup():
    assert ggml_type("q4_k").bits_per_weight == 4.5
    assert TYPES["Q6_K"].bits_per_weight == 6.5625
    with pytest.raises(ValueError, match="unknown GGUF type"):
        ggml_type("Q7_K")


def test_rows_not_multiple_of_block_rejected():
    with pytest.raises(ValueError, match="multiple of 256"):
        quantize_rtn(TYPES["Q4_K"], torch.randn(4, 576))
