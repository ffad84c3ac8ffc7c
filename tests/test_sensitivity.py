"""The coherent Fisher estimate of automatic precision against KL measured by transformers."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from tensorpress.calibration.forward import capture_inputs
from tensorpress.calibration.sensitivity import forward_hessians, output_fisher
from tensorpress.calibration.stats import Hessian
from tensorpress.calibration.windows import calibration_windows, load_tokenizer
from tensorpress.compressors.quantize import rtn_quantize
from tensorpress.formats.quantized import QuantScheme
from tensorpress.model.architecture import build_skeleton
from tensorpress.model.checkpoint import open_checkpoint
from tensorpress.pipeline.auto.awq_columns import candidate_columns
from tensorpress.pipeline.auto.measure import rounding_error

MODULES = ["model.layers.0.self_attn.v_proj", "model.layers.1.mlp.down_proj", "model.layers.1.self_attn.q_proj"]


def noise(name: str, W: torch.Tensor) -> torch.Tensor:
    """A fixed small error matrix per module (same tensor in the estimate and the measurement)."""
    gen = torch.Generator().manual_seed(sum(map(ord, name)))
    return 0.3 * W.std() * torch.randn(W.shape, generator=gen)


def output_error(D: torch.Tensor, H: torch.Tensor) -> float:
    return float(((D @ H) * D).sum())


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_coherent_estimate_predicts_single_module_kl(tiny_models, text_file, arch):
    from transformers import AutoModelForCausalLM

    path = tiny_models[arch]
    ckpt = open_checkpoint(path)
    skel = build_skeleton(ckpt.config_dict, ckpt.reader.names())
    names = MODULES if arch == "llama" else ["transformer.h.0.attn.c_attn", "transformer.h.1.mlp.c_proj"]
    windows = calibration_windows(str(text_file), load_tokenizer(path), 24, 32, seed=0)
    inputs, kwargs = capture_inputs(skel, ckpt, windows, 24, "cpu")
    kept = forward_hessians(skel, ckpt.tensor, inputs, kwargs, names, lambda *_: None, 1, "cpu")
    probes = {}

    def probe(n: str, W: torch.Tensor) -> list[torch.Tensor]:
        probes[n] = noise(n, W)
        return [probes[n]]

    _g, tokens, coherent = output_fisher(
        skel, ckpt.tensor, kept, kwargs, names, skel.head_source(), 0, "cpu", None, probe
    )
    ckpt.close()
    assert tokens == 24 * 31

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()

    def logp() -> torch.Tensor:
        with torch.no_grad():
            return torch.log_softmax(model(windows).logits[:, :-1].float(), -1)

    base = logp()
    for n in names:
        lin = model.get_submodule(n)
        w0 = lin.weight.data.clone()
        D = probes[n] if lin.weight.shape == probes[n].shape else probes[n].T  # Conv1D stores (in, out)
        lin.weight.data = w0 - D
        kl = float((base.exp() * (base - logp())).sum(-1).mean())
        lin.weight.data = w0
        assert kl > 0
        assert 0.7 < coherent[n][0] / kl < 1.4, (n, coherent[n][0], kl)


def test_awq_aware_rounding_error_is_what_awq_leaves():
    """With an outlier input channel, AWQ's column scales cut the Hessian-weighted rounding error, and the
    error is reported in the original coordinates (W − ΔW is the dequantized scaled weight, unscaled)."""
    gen = torch.Generator().manual_seed(0)
    W = torch.randn(64, 128, generator=gen)
    x = torch.randn(2048, 128, generator=gen)
    x[:, 5] *= 30  # one channel carries large activations
    h = Hessian(torch.zeros(128, 128), abs_sum=torch.zeros(128))
    h.add(x)
    cands = [QuantScheme(bits=b, group_size=32, symmetric=True) for b in (2, 3, 4)]
    cols = candidate_columns({"m": W}, h, cands, SimpleNamespace(grid=20, duo_scaling=False), None)
    assert all(c is not None and c.shape == (128,) for c in cols)
    for sch, c in zip(cands, cols, strict=True):
        plain = rounding_error(W, sch, torch.diag(h.H))
        scaled = rounding_error(W, sch, torch.diag(h.H), c)
        assert output_error(scaled, h.H) < 0.8 * output_error(plain, h.H)
        assert torch.allclose(W - scaled, rtn_quantize(W * c, sch, torch.float32).dequantize() / c, atol=1e-5)
