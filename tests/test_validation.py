"""The validators' accepting side: what tests/test_bad_inputs.py refuses must not catch good inputs."""

from __future__ import annotations

import json

import pytest

from tensorpress.cli.main import main
from tensorpress.errors import TensorpressError
from tensorpress.infra.inputs import MAX_DEPTH, parse_json, parse_yaml
from tensorpress.infra.patterns import fullmatch
from tests.damage import GOOD_RECIPE, copy_model, edit_tensors, write


def test_yaml_anchor_without_alias_and_deep_but_legal_nesting_load():
    assert parse_yaml("steps: &s [1]\n", "r") == {"steps": [1]}
    nested = "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1)
    assert parse_yaml(f"x: {nested}\n", "r")["x"] is not None


def test_json_brackets_inside_strings_do_not_count_as_nesting():
    text = json.dumps({"a": "[" * 10_000, "b": {"c": [1, 2]}})
    assert parse_json(text, "c")["b"] == {"c": [1, 2]}


def test_regex_timeout_names_the_pattern_and_ordinary_regexes_match():
    assert fullmatch(r"model\.layers\.\d+\.mlp\..*", "model.layers.3.mlp.up_proj", "t")
    with pytest.raises(TensorpressError, match=r"\(\.\*\)\{1,32000\}\[bc\]"):
        fullmatch("(.*){1,32000}[bc]", "model.layers.0.self_attn.q_proj", "steps[0].targets")


def test_extra_tensor_is_one_warning_line_and_the_run_succeeds(tiny_models, tmp_path, capsys):
    import torch

    model = copy_model(tiny_models["llama"], tmp_path / "model")
    edit_tensors(model / "model.safetensors", lambda t: t.__setitem__("model.leftover.weight", torch.ones(3)))
    recipe = write(tmp_path / "r.yaml", GOOD_RECIPE)
    rc = main(["compress", str(model), "--recipe", str(recipe), "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 0
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("warning: ") and "model.leftover.weight" in lines[0], err


def test_allow_long_context_lets_a_long_window_through(tiny_models, text_file, capsys):
    argv = ["eval", str(tiny_models["llama"]), "--text", str(text_file), "--windows", "1", "--seqlen", "300"]
    assert main(argv) == 2
    assert "max_position_embeddings" in capsys.readouterr().err
    assert main([*argv, "--allow-long-context", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["seqlen"] == 300


def test_packed_output_still_loads_after_the_scheme_checks(tiny_models, tmp_path):
    import tensorpress

    recipe = {"steps": [{"rtn": {"bits": 3, "group_size": 32, "symmetric": False}, "ignore": ["lm_head"]}]}
    out = tensorpress.compress(tiny_models["llama"], recipe, tmp_path / "out").out
    model = tensorpress.load(out)
    assert model.model.layers[0].self_attn.q_proj.weight.shape == (96, 96)
