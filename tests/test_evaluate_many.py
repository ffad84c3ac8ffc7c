"""evaluate_many runs the base once and must agree exactly with evaluate_tokens, model by model."""

import pytest
import torch

import tensorpress
from tensorpress.evaluation.metrics import evaluate_many, evaluate_tokens


def test_evaluate_many_matches_evaluate_tokens(tiny_models, tmp_path):
    base = tiny_models["llama"]
    outs = {}
    for bits in (3, 8):
        outs[f"w{bits}"] = tmp_path / f"w{bits}"
        tensorpress.compress(base, {"steps": [{"rtn": {"bits": bits, "group_size": 32}}]}, outs[f"w{bits}"])
    tokens = torch.randint(0, 320, (3, 32), generator=torch.Generator().manual_seed(0))
    many = evaluate_many(outs, base, tokens)
    for name, path in outs.items():
        one = evaluate_tokens(path, base, tokens)
        for key in ("ppl", "kl", "top1_agreement", "ppl_base", "tokens"):
            assert many[name][key] == pytest.approx(one[key], rel=1e-9), (name, key)
    assert many["w3"]["kl"] > many["w8"]["kl"] > 0
    assert many["base"]["ppl"] == pytest.approx(many["w3"]["ppl_base"])
