"""The command line: bad input gives one line, a non-zero exit, and nothing written or overwritten."""

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tensorpress.cli.main import main
from tests.conftest import make_model


def run(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(rc: int, err: str, *needles: str) -> None:
    assert rc == 2
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.fixture()
def recipe_file(tmp_path) -> Path:
    p = tmp_path / "r.yaml"
    p.write_text("steps:\n  - rtn: {bits: 4, group_size: 32}\n    ignore: [lm_head]\n")
    return p


def test_compress_cli_happy_path(capsys, tiny_models, recipe_file, text_file, tmp_path):
    out = tmp_path / "out"
    rc, stdout, _ = run(
        capsys,
        "compress",
        tiny_models["llama"],
        "--recipe",
        recipe_file,
        "--out",
        out,
        "--eval",
        text_file,
        "--windows",
        2,
        "--seqlen",
        32,
        "--quiet",
    )
    assert rc == 0 and stdout == ""
    assert json.loads((out / "report.json").read_text())["tokens"] == 62
    rc, stdout, _ = run(capsys, "eval", out, "--text", text_file, "--windows", 2, "--seqlen", 32, "--format", "json")
    m = json.loads(stdout)
    assert rc == 0 and m["base"] == str(tiny_models["llama"].resolve()) and m["kl"] > 0
    rc, stdout, _ = run(capsys, "inspect", out, "--format", "json")
    info = json.loads(stdout)
    assert info["summary"]["quantized_modules"] == 14
    assert info["summary"]["bits_per_weight"] == pytest.approx(4.5)
    assert info["recipe"]["steps"][0]["rtn"]["bits"] == 4
    rc, stdout, _ = run(capsys, "decompress", out, "--out", tmp_path / "dense")
    assert rc == 0 and "weight_packed" not in str(load_file(tmp_path / "dense" / "model.safetensors").keys())
    rc, stdout, _ = run(capsys, "list", "--format", "json")
    fields = {f["name"]: f["default"] for f in json.loads(stdout)["compressors"]["rtn"]["fields"]}
    assert fields == {"bits": 4, "group_size": 64, "symmetric": True}


def test_help_shows_an_example(capsys):
    for cmd in ("compress", "eval", "inspect", "decompress", "list", "sample"):
        rc, out, _ = run(capsys, cmd, "--help")
        assert rc == 0 and "Example" in out and f"tensorpress {cmd}" in out


def test_missing_model(capsys, recipe_file, tmp_path):
    rc, _, err = run(capsys, "compress", tmp_path / "nope", "--recipe", recipe_file, "--out", tmp_path / "o")
    assert_one_line_error(rc, err, "nope", "no such file or folder")
    assert not (tmp_path / "o").exists()


def test_folder_without_weights(capsys, recipe_file, tmp_path, tiny_models):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text((tiny_models["llama"] / "config.json").read_text())
    rc, _, err = run(capsys, "compress", empty, "--recipe", recipe_file, "--out", tmp_path / "o")
    assert_one_line_error(rc, err, "no safetensors weights")


def _copy_model(src: Path, dest: Path) -> Path:
    dest.mkdir()
    for f in src.iterdir():
        (dest / f.name).write_bytes(f.read_bytes())
    return dest


def test_truncated_safetensors(capsys, recipe_file, tmp_path, tiny_models):
    m = _copy_model(tiny_models["llama"], tmp_path / "m")
    data = (m / "model.safetensors").read_bytes()
    (m / "model.safetensors").write_bytes(data[: len(data) - 1000])
    rc, _, err = run(capsys, "compress", m, "--recipe", recipe_file, "--out", tmp_path / "o")
    assert_one_line_error(rc, err, "model.safetensors", "truncated")
    assert not (tmp_path / "o").exists()


def test_corrupt_safetensors_header(capsys, recipe_file, tmp_path, tiny_models):
    m = _copy_model(tiny_models["llama"], tmp_path / "m")
    data = bytearray((m / "model.safetensors").read_bytes())
    (_n,) = struct.unpack("<Q", data[:8])
    data[8 : 8 + 20] = b"\xff" * 20
    (m / "model.safetensors").write_bytes(bytes(data))
    rc, _, err = run(capsys, "compress", m, "--recipe", recipe_file, "--out", tmp_path / "o")
    assert_one_line_error(rc, err, "model.safetensors", "corrupt")


def test_nan_weights_name_the_tensor(capsys, recipe_file, tmp_path):
    m = make_model(tmp_path / "nan", "llama")
    sd = load_file(m / "model.safetensors")
    sd["model.layers.1.mlp.up_proj.weight"][3, 5] = float("nan")
    save_file(sd, m / "model.safetensors", metadata={"format": "pt"})
    capsys.readouterr()
    rc, _, err = run(capsys, "compress", m, "--recipe", recipe_file, "--out", tmp_path / "o")
    assert_one_line_error(rc, err, "model.layers.1.mlp.up_proj.weight", "NaN or Inf")
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".o.partial-*"))


@pytest.mark.parametrize(
    "body, needle",
    [
        ("steps:\n  - rtn: {bitz: 4}\n", "steps[0].rtn.bitz: unknown key"),
        ("steps:\n  - gptx: {}\n", "unknown compressor 'gptx'"),
        ("steps:\n  - rtn: {bits: 1}\n", "steps[0].rtn.bits: must be 2–8, got 1"),
        ("steps:\n  - rtn: {bits: 9}\n", "steps[0].rtn.bits: must be 2–8, got 9"),
        ("steps:\n  - rtn: {group_size: 0}\n", "steps[0].rtn.group_size"),
    ],
)
def test_bad_recipes(capsys, tiny_models, tmp_path, body, needle):
    p = tmp_path / "bad.yaml"
    p.write_text(body)
    rc, _, err = run(capsys, "compress", tiny_models["llama"], "--recipe", p, "--out", tmp_path / "o")
    assert_one_line_error(rc, err, "bad.yaml", needle)
    assert not (tmp_path / "o").exists()


def test_existing_out_not_overwritten_without_force(capsys, tiny_models, recipe_file, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    rc, _, err = run(capsys, "compress", tiny_models["llama"], "--recipe", recipe_file, "--out", out)
    assert_one_line_error(rc, err, str(out), "--force")
    assert (out / "precious.txt").read_text() == "keep me"
    # --force replaces only a folder tensorpress wrote (tests/test_output_safety.py has the rest)
    rc, _, err = run(capsys, "compress", tiny_models["llama"], "--recipe", recipe_file, "--out", out, "--force")
    assert_one_line_error(rc, err, str(out), "not written by tensorpress")
    assert (out / "precious.txt").read_text() == "keep me"


def test_failed_run_keeps_previous_good_output(capsys, tiny_models, recipe_file, tmp_path, text_file):
    out = tmp_path / "o"
    assert run(capsys, "compress", tiny_models["llama"], "--recipe", recipe_file, "--out", out, "--quiet")[0] == 0
    before = (out / "model.safetensors").read_bytes()
    # too short a text for the windows asked: fails before any work, good output untouched
    rc, _, err = run(
        capsys,
        "compress",
        tiny_models["llama"],
        "--recipe",
        recipe_file,
        "--out",
        out,
        "--force",
        "--eval",
        text_file,
        "--windows",
        1000,
        "--seqlen",
        128,
    )
    assert_one_line_error(rc, err, "too short", "1000 windows of 128")
    assert (out / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o", "r.yaml"]


def test_eval_text_too_short(capsys, tiny_models, text_file):
    rc, _, err = run(capsys, "eval", tiny_models["llama"], "--text", text_file, "--windows", 500, "--seqlen", 256)
    assert_one_line_error(rc, err, str(text_file), "too short")


def test_unknown_architecture(capsys, tiny_models, recipe_file, tmp_path):
    m = _copy_model(tiny_models["llama"], tmp_path / "m")
    cfg = json.loads((m / "config.json").read_text())
    cfg["model_type"] = "t5"
    (m / "config.json").write_text(json.dumps(cfg))
    rc, _, err = run(capsys, "compress", m, "--recipe", recipe_file, "--out", tmp_path / "o")
    assert_one_line_error(rc, err, "not")


def test_debug_env_shows_traceback(monkeypatch, tmp_path, recipe_file):
    from tensorpress.errors import TensorpressError

    monkeypatch.setenv("TENSORPRESS_DEBUG", "1")
    with pytest.raises(TensorpressError):
        main(["compress", str(tmp_path / "nope"), "--recipe", str(recipe_file), "--out", str(tmp_path / "o")])


def test_gpt2_output_notes_conv1d(tiny_models, tmp_path):
    import tensorpress

    res = tensorpress.compress(tiny_models["gpt2"], {"steps": [{"rtn": {}, "ignore": ["lm_head"]}]}, tmp_path / "g")
    assert any("Conv1D" in n for n in res.notes)
    assert torch.isfinite(tensorpress.load(tmp_path / "g").transformer.h[0].attn.c_attn.weight).all()
