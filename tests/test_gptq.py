"""GPTQ on single layers with synthetic Hessians, and through the pipeline on tiny models."""

import json

import pytest
import torch

import tensorpress
from tensorpress.compressors.gptq_sweep import gptq_quantize
from tensorpress.compressors.quantize import rtn_quantize
from tensorpress.formats.compressed_tensors import decode_weight, pack_tensors
from tensorpress.formats.quantized import QuantScheme


def correlated_inputs(n: int, d: int, seed: int = 0) -> torch.Tensor:
    """Activations with a few dominant, correlated directions, as real layer inputs have."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g) * (torch.rand(d, generator=g) ** 4)[:, None]
    return torch.randn(n, d, generator=g) @ mix + 0.05 * torch.randn(n, d, generator=g)


def output_error(W: torch.Tensor, Q: torch.Tensor, H: torch.Tensor) -> float:
    D = W - Q
    return float(torch.trace(D @ H @ D.T))


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("group_size", [-1, 32, 40])
@pytest.mark.parametrize("symmetric", [True, False])
def test_gptq_output_error_below_rtn(act_order, group_size, symmetric):
    torch.manual_seed(0)
    W = torch.randn(48, 96) * 0.05
    X = correlated_inputs(2048, 96)
    H = X.T @ X
    scheme = QuantScheme(3, group_size, symmetric)
    res = gptq_quantize(W, H, scheme, torch.float32, block_size=32, act_order=act_order)
    rtn = rtn_quantize(W, scheme, torch.float32)
    e_gptq = output_error(W, res.qw.dequantize(), H)
    e_rtn = output_error(W, rtn.dequantize(), H)
    assert e_gptq < 0.8 * e_rtn, (e_gptq, e_rtn)
    assert res.qw.codes.min() >= scheme.qmin and res.qw.codes.max() <= scheme.qmax
    assert res.qw.scale.shape == (48, scheme.groups(96))


@pytest.mark.parametrize("act_order", [False, True])
def test_act_order_codes_round_trip_through_packed_format(act_order):
    W = torch.randn(20, 70) * 0.1
    X = correlated_inputs(512, 70, seed=1)
    scheme = QuantScheme(4, 32, False)  # 70 = 32 + 32 + 6
    res = gptq_quantize(W, X.T @ X, scheme, torch.bfloat16, block_size=16, act_order=act_order)
    tensors = pack_tensors("m", res.qw)
    decoded = decode_weight("m", scheme, tensors.__getitem__)
    assert torch.equal(decoded, res.qw.dequantize())
    # codes of every column use their original contiguous group: re-quantizing the dequantized weight
    # with the stored parameters reproduces the codes exactly (no g_idx needed)
    s = res.qw.scale.float()[:, torch.arange(70) // 32]
    z = res.qw.zero.float()[:, torch.arange(70) // 32]
    again = torch.clamp(torch.round(decoded / s) + z, -8, 7).to(torch.int8)
    assert torch.equal(again, res.qw.codes)


def test_non_positive_definite_hessian_triggers_dampening_retry():
    W = torch.randn(8, 16)
    v = torch.randn(16, 1)
    H = v @ v.T  # rank one
    H[0, 1] = H[1, 0] = H[0, 1] + 100.0  # indefinite
    res = gptq_quantize(W, H, QuantScheme(4, -1, True), torch.float32, dampening=0.01)
    assert res.retries >= 1 and res.dampening > 0.01
    assert torch.isfinite(res.qw.dequantize()).all()


def test_dead_inputs_get_zero_weight():
    W = torch.randn(8, 32)
    X = torch.randn(256, 32)
    X[:, 5] = 0
    res = gptq_quantize(W, X.T @ X, QuantScheme(4, 16, True), torch.float32)
    assert torch.all(res.qw.dequantize()[:, 5] == 0)


def test_mse_clip_lowers_weight_error():
    torch.manual_seed(3)
    W = torch.randn(32, 128) * 0.02
    W[:, 7] *= 20  # an outlier per row stretches the min/max range
    H = torch.eye(128)
    plain = gptq_quantize(W, H, QuantScheme(3, 64, True), torch.float32)
    clipped = gptq_quantize(W, H, QuantScheme(3, 64, True), torch.float32, mse_clip=True)
    assert output_error(W, clipped.qw.dequantize(), H) < output_error(W, plain.qw.dequantize(), H)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "opt", "qwen2", "mistral"])
def test_gptq_pipeline_beats_rtn_on_tiny_models(tiny_models, text_file, tmp_path, arch):
    calib = {"text": str(text_file), "samples": 8, "seqlen": 32, "batch_size": 4}
    gptq = {"calibration": calib, "steps": [{"gptq": {"bits": 3, "group_size": 32}, "ignore": ["lm_head"]}]}
    rtn = {"steps": [{"rtn": {"bits": 3, "group_size": 32}, "ignore": ["lm_head"]}]}
    kw = dict(eval_text=str(text_file), windows=3, seqlen=32)
    rg = tensorpress.compress(tiny_models[arch], gptq, tmp_path / "g", **kw).report
    rr = tensorpress.compress(tiny_models[arch], rtn, tmp_path / "r", **kw).report
    assert rg["kl"] < rr["kl"], (rg["kl"], rr["kl"])
    assert rg["bits_per_weight"] == rr["bits_per_weight"]
    cfg = json.loads((tmp_path / "g" / "config.json").read_text())
    assert cfg["tensorpress"]["recipe"]["steps"][0]["gptq"]["true_sequential"] is True


def test_gptq_on_lm_head_rejected(tiny_models, tmp_path):
    from tensorpress.errors import TensorpressError

    with pytest.raises(TensorpressError, match="cannot target lm_head"):
        tensorpress.compress(tiny_models["llama"], {"steps": [{"gptq": {}}]}, tmp_path / "x")


@pytest.mark.parametrize("act_order", [False, True])
def test_stacked_modules_sharing_a_hessian_quantize_exactly_as_separately(act_order):
    """GPTQ.apply quantizes q/k/v (and gate/up) in one call; rows are independent given H."""
    X = correlated_inputs(1024, 64, seed=3)
    H = X.T @ X
    Ws = [torch.randn(n, 64) * 0.05 for n in (32, 16, 16)]
    scheme = QuantScheme(4, 24, False)  # 64 = 24 + 24 + 16: a short last group too
    stacked = gptq_quantize(torch.cat(Ws), H, scheme, torch.bfloat16, block_size=16, act_order=act_order)
    row = 0
    for W in Ws:
        alone = gptq_quantize(W, H, scheme, torch.bfloat16, block_size=16, act_order=act_order)
        assert torch.equal(stacked.qw.codes[row : row + len(W)], alone.qw.codes)
        assert torch.equal(stacked.qw.scale[row : row + len(W)], alone.qw.scale)
        row += len(W)
