import pytest

from tensorpress.errors import TensorpressError
from tensorpress.pipeline.recipe import builtin_recipes, load_recipe, match, parse_recipe


def bad(raw) -> str:
    with pytest.raises(TensorpressError) as e:
        parse_recipe(raw, "r.yaml")
    return str(e.value)


def test_shipped_recipes_parse_and_resolve_defaults():
    assert {"default", "rtn-w4g64"} <= set(builtin_recipes())
    r = load_recipe("rtn-w4g64")
    d = r.to_dict()
    assert d["steps"][0] == {"rtn": {"bits": 4, "group_size": 64, "symmetric": True}, "ignore": ["lm_head"]}
    assert d["calibration"]["samples"] == 128
    assert not r.needs_calibration


def test_recipe_file_by_path(tmp_path):
    p = tmp_path / "mine.yaml"
    p.write_text("steps:\n  - rtn: {bits: 3, group_size: -1}\n")
    r = load_recipe(p)
    assert r.steps[0].config.bits == 3 and r.steps[0].config.group_size == -1


@pytest.mark.parametrize(
    "raw, expected",
    [
        ({"steps": [{"rtn": {"bitz": 4}}]}, "steps[0].rtn.bitz: unknown key 'bitz'"),
        ({"steps": [{"gptx": {}}]}, "steps[0]: unknown compressor 'gptx'"),
        ({"steps": [{"rtn": {"bits": 1}}]}, "steps[0].rtn.bits: must be 2–8, got 1"),
        ({"steps": [{"rtn": {"bits": 9}}]}, "steps[0].rtn.bits: must be 2–8, got 9"),
        ({"steps": [{"rtn": {"group_size": 0}}]}, "steps[0].rtn.group_size"),
        ({"steps": [{"rtn": {"bits": "four"}}]}, "steps[0].rtn.bits: must be int, got 'four'"),
        ({"steps": [{"rtn": {"symmetric": 1}}]}, "steps[0].rtn.symmetric: must be bool"),
        ({"stepz": []}, "stepz: unknown key"),
        ({"steps": []}, "steps: must be a non-empty list"),
        ({"steps": [{"rtn": {}, "ignore": [3]}]}, "steps[0].ignore"),
        ({"steps": [{"rtn": {}, "ignore": ["re:("]}]}, "bad regex"),
        ({"steps": [{"rtn": {}}, {"rtn": {}, "targetz": []}]}, "steps[1]: needs exactly one compressor key"),
        ({"calibration": {"samples": 0}, "steps": [{"rtn": {}}]}, "calibration.samples: must be ≥ 1"),
        ({"calibration": {"sample": 3}, "steps": [{"rtn": {}}]}, "calibration.sample: unknown key"),
    ],
)
def test_bad_recipes_name_step_and_key(raw, expected):
    msg = bad(raw)
    assert expected in msg
    assert msg.startswith("recipe 'r.yaml': ")
    assert "\n" not in msg


def test_unknown_recipe_name_lists_shipped():
    with pytest.raises(TensorpressError, match=r"shipped: .*rtn-w4g64"):
        load_recipe("no-such-recipe")


def test_invalid_yaml_names_line(tmp_path):
    p = tmp_path / "broken.yaml"
    p.write_text("steps:\n  - rtn: {bits: 4\n")
    with pytest.raises(TensorpressError, match=r"broken.yaml'.*line \d+.*invalid YAML"):
        load_recipe(p)


def test_module_patterns():
    assert match("lm_head", "lm_head")
    assert match("q_proj", "model.layers.3.self_attn.q_proj")
    assert match("self_attn.*", "model.layers.3.self_attn.q_proj")
    assert not match("self_attn.*", "model.layers.3.mlp.up_proj")
    assert match(r"re:model\.layers\.[0-4]\..*", "model.layers.3.mlp.up_proj")
    assert not match(r"re:model\.layers\.[0-4]\..*", "model.layers.13.mlp.up_proj")
    assert not match("proj", "model.layers.3.mlp.up_proj")
