"""Usage mistakes get Click's own message and exit 2; bad --device values one line listing the devices here;
compress logs a plain line per layer and per stage on stdout when it is not a terminal."""

from __future__ import annotations

import re

import pytest

from tensorpress.cli.main import main


def run(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["compress", "m", "--recipe", "r", "--out", "o", "--windows", "0"], "'--windows'"),
        (["eval", "m", "--seqlen", "abc"], "'--seqlen'"),
        (["eval", "m", "--format", "xml"], "'--format'"),
        (["nosuch"], "No such command 'nosuch'"),
        (["compress", "m", "--recipe", "r", "--out", "o", "--bogus"], "No such option: --bogus"),
        (["compress", "m", "--out", "o"], "--recipe"),
        (["decompress", "--out", "o"], "Missing argument 'model'"),
        (["batch"], "Missing argument 'matrix'"),
        (["eval", "m", "--windows", "1.5"], "'--windows'"),
    ],
)
def test_usage_mistakes_are_clicks_message_and_exit_2(capsys, argv, needle):
    rc, out, err = run(capsys, *argv)
    assert rc == 2, (rc, err)
    assert "internal error" not in err and "Traceback" not in err
    assert err.startswith("Usage: tensorpress ") and "\nError: " in err and needle in err, err
    assert out == ""


def test_option_missing_its_value(capsys):
    rc, out, err = run(capsys, "batch", "m.yaml", "--out", "o", "--shard")
    assert rc == 2 and err.strip() == "Error: Option '--shard' requires an argument." and out == ""


def test_help_still_exits_0(capsys):
    rc, out, _ = run(capsys, "compress", "--help")
    assert rc == 0 and "--recipe" in out


@pytest.mark.parametrize("device", ["bogus", "", "cuda", "cuda:99", "mps", "cpu:0", "CUDA"])
@pytest.mark.parametrize("command", ["compress", "eval", "batch"])
def test_bad_device_is_one_line_naming_the_devices_here(capsys, tmp_path, device, command):
    import torch

    if device.startswith("cuda") and torch.cuda.is_available() and device != "cuda:99":
        pytest.skip("this machine has CUDA")
    missing = tmp_path / "no-such-model"  # the device is checked before anything is read
    argv = {
        "compress": ["compress", missing, "--recipe", "rtn-w4g64", "--out", tmp_path / "o"],
        "eval": ["eval", missing],
        "batch": ["batch", tmp_path / "no-such-matrix.yaml", "--out", tmp_path / "o"],
    }[command]
    rc, _, err = run(capsys, *argv, "--device", device)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1, err
    assert lines[0].startswith(f"error: --device {device!r}: ") and "devices here: cpu" in lines[0]
    assert not (tmp_path / "o").exists()


def test_compress_logs_a_plain_line_per_layer_and_stage(capsys, tiny_models, tmp_path):
    r = tmp_path / "r.yaml"
    r.write_text("steps:\n  - rtn: {bits: 4, group_size: 32}\n")
    rc, out, err = run(capsys, "compress", tiny_models["llama"], "--recipe", r, "--out", tmp_path / "o")
    assert rc == 0 and "wrote" in out and err == ""  # stderr is for errors only
    lines = [ln.split("] ", 1)[1] for ln in out.splitlines() if ln.startswith("[")]
    per_layer = [ln for ln in lines if re.fullmatch(r"layers \d+/2, [\d.]+s elapsed, ETA [\d.]+s", ln)]
    assert [ln.split(",")[0] for ln in per_layer] == ["layers 1/2", "layers 2/2"], lines
    for stage in ("load", "compress"):
        assert f"{stage}: start" in lines and any(ln.startswith(f"{stage}: done in ") for ln in lines), lines
    assert "\x1b[" not in out  # no terminal control codes in a log
