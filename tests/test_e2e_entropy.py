"""Lossless coding end to end on the real sample model: the ratio targets, bit-exact tensors, same ppl."""

import pytest
import torch

import tensorpress
from tensorpress.formats.safetensors_io import SafetensorsReader

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("level, target", [("max", 0.665), ("fast", 0.68)])
def test_sample_entropy_ratio_and_exact_tensors(sample, tmp_path, level, target):
    out = tmp_path / level
    tensorpress.compress(sample.model, {"steps": [{"entropy": {"level": level}}]}, out)
    base_file, coded_file = sample.model / "model.safetensors", out / "model.safetensors"
    assert coded_file.stat().st_size <= target * base_file.stat().st_size  # whole file: header and table too
    with SafetensorsReader([base_file]) as a, SafetensorsReader([coded_file]) as b:
        assert set(a.names()) == set(b.names()) == set(b.coded)
        for name in a.names():
            assert torch.equal(a.get(name).view(torch.int16), b.get(name).view(torch.int16)), name
    if level == "max":
        ours = tensorpress.evaluate(out, text="kjv:eval", windows=2, seqlen=128)
        base = tensorpress.evaluate(sample.model, text="kjv:eval", windows=2, seqlen=128)
        assert ours["ppl"] == base["ppl"]
