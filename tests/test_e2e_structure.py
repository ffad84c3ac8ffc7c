"""Structural compressors end to end on the real sample model (small calibration and evaluation)."""

import pytest
import torch

import tensorpress
from tensorpress.calibration.windows import eval_windows, load_tokenizer
from tensorpress.evaluation.metrics import BaseReference, evaluate_tokens
from tensorpress.formats.sizes import size_stats

pytestmark = pytest.mark.e2e

CALIB = {"text": "kjv:calib", "samples": 8, "seqlen": 256}


def test_wanda_beats_magnitude_and_bytes_track_bits(sample, tmp_path):
    tokens = eval_windows("kjv:eval", load_tokenizer(sample.model), 4, 256)
    ref = BaseReference.compute(sample.model, tokens, tmp_path / "base.npy")
    results = {}
    for method in ("magnitude", "wanda"):
        out = tmp_path / method
        steps = [{"prune": {"method": method, "sparsity": 0.5}, "ignore": ["lm_head"]}]
        tensorpress.compress(sample.model, {"calibration": CALIB, "steps": steps}, out)
        results[method] = evaluate_tokens(out, ref, tokens)
        sz = size_stats(out)
        assert sz["bits_per_weight"] == pytest.approx(9.0)
        assert sz["size_bytes"] < 0.75 * size_stats(sample.model)["size_bytes"]  # embeddings stay dense
    assert results["wanda"]["ppl"] < results["magnitude"]["ppl"]
    assert results["wanda"]["kl"] < results["magnitude"]["kl"]
    model = tensorpress.load(tmp_path / "wanda")
    w = model.model.layers[3].mlp.down_proj.weight
    assert float((w == 0).float().mean()) == pytest.approx(0.5, abs=1e-3)
    assert bool(torch.isfinite(w).all())
