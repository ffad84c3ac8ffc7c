"""Outputs never overwrite inputs, --force replaces only tensorpress outputs, failures leave nothing behind.

In-process (fast): path overlap for every writing command, the marker rule, the lock, a writer failing
with ENOSPC and a layer failing mid-run onto a good earlier output.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import shutil
from pathlib import Path

import pytest

from tensorpress.cli.main import main
from tensorpress.infra.locks import lock_path
from tensorpress.infra.outputs import MARKER, read_marker

RTN = "steps:\n  - rtn: {bits: 4, group_size: 32}\n    ignore: [lm_head]\n"


def run(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def tree(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def refused(rc: int, err: str, *names) -> None:
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and "internal error" not in err
    for n in names:
        assert str(n) in lines[0], (n, err)


@pytest.fixture
def world(tmp_path, tiny_models):
    """A copy of the tiny Llama inside a folder that also holds a recipe and a text."""
    home = tmp_path / "home"
    model = home / "models" / "llama"
    shutil.copytree(tiny_models["llama"], model)
    (home / "r.yaml").write_text(RTN)
    (home / "text.txt").write_text("In the beginning " * 200)
    return home, model


@pytest.mark.parametrize("force", [False, True])
@pytest.mark.parametrize("where", ["model", "parent", "grandparent", "inside", "recipe-folder", "symlink"])
def test_compress_out_overlapping_an_input_is_refused(capsys, world, where, force):
    home, model = world
    out = {
        "model": model,
        "parent": model.parent,
        "grandparent": home,
        "inside": model / "out",
        "recipe-folder": home,
        "symlink": home / "link",
    }[where]
    if where == "symlink":
        out.symlink_to(model.parent, target_is_directory=True)
    before = tree(home)
    rc, _, err = run(
        capsys, "compress", model, "--recipe", home / "r.yaml", "--out", out, *(["--force"] if force else [])
    )
    refused(rc, err, f"--out {out}", "input")
    assert tree(home) == before


def test_text_and_base_files_are_inputs_too(capsys, world, tmp_path):
    home, model = world
    out = tmp_path / "o"
    (tmp_path / "o").mkdir()
    text = out / "t.txt"
    text.write_text("In the beginning " * 200)
    rc, _, err = run(capsys, "compress", model, "--recipe", home / "r.yaml", "--out", out, "--eval", text, "--force")
    refused(rc, err, str(text))
    assert text.is_file()


def test_gguf_input_folder_is_refused(capsys, tmp_path, tiny_models):
    folder = tmp_path / "g"
    folder.mkdir()
    (folder / "m.gguf").write_bytes(b"GGUF not really")
    (tmp_path / "r.yaml").write_text(RTN)
    rc, _, err = run(capsys, "compress", folder / "m.gguf", "--recipe", tmp_path / "r.yaml", "--out", folder, "--force")
    refused(rc, err, str(folder), "m.gguf")
    assert (folder / "m.gguf").read_bytes() == b"GGUF not really"


def test_decompress_onto_itself_or_inside_is_refused(capsys, world, tmp_path):
    home, model = world
    src = tmp_path / "c"
    assert run(capsys, "compress", model, "--recipe", home / "r.yaml", "--out", src, "--quiet")[0] == 0
    before = tree(src)
    for out in (src, src / "dense", tmp_path):
        rc, _, err = run(capsys, "decompress", src, "--out", out, "--force")
        refused(rc, err, f"--out {out}", str(src))
    assert tree(src) == before


def test_batch_and_merge_outputs_apart_from_inputs(capsys, world, tmp_path):
    home, model = world
    m = home / "matrix.yaml"
    m.write_text(f"models: [{model}]\nrecipes: [r.yaml]\neval: {{text: {home / 'text.txt'}, windows: 1, seqlen: 8}}\n")
    before = tree(home)
    for out in (home, model, model / "b"):
        rc, _, err = run(capsys, "batch", m, "--out", out, "--force")
        refused(rc, err, f"--out {out}")
    assert tree(home) == before
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        (d / "summary.json").write_text("{}")
    for out in (a, b / "merged", tmp_path):
        rc, _, err = run(capsys, "batch-merge", a, b, "--out", out, "--force")
        refused(rc, err, f"--out {out}")
    assert (a / "summary.json").read_text() == "{}" and sorted(os.listdir(b)) == ["summary.json"]


def test_force_replaces_only_tensorpress_outputs(capsys, world, tmp_path):
    home, model = world
    out = tmp_path / "o"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    for extra in ([], ["--force"]):
        rc, _, err = run(capsys, "compress", model, "--recipe", home / "r.yaml", "--out", out, *extra)
        refused(rc, err, f"--out {out}", "not written by tensorpress")
    assert sorted(os.listdir(out)) == ["precious.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run(capsys, "compress", model, "--recipe", home / "r.yaml", "--out", empty, "--quiet")[0] == 0
    assert read_marker(empty)["kind"] == "compress"
    rc, _, err = run(capsys, "compress", model, "--recipe", home / "r.yaml", "--out", empty)
    refused(rc, err, "--force")
    (empty / "extra.txt").write_text("x")
    assert run(capsys, "compress", model, "--recipe", home / "r.yaml", "--out", empty, "--force", "--quiet")[0] == 0
    assert not (empty / "extra.txt").exists() and (empty / MARKER).is_file()
    (empty / MARKER).write_text("{not json")  # a damaged marker is no marker
    rc, _, err = run(capsys, "compress", model, "--recipe", home / "r.yaml", "--out", empty, "--force")
    refused(rc, err, "not written by tensorpress")


@pytest.fixture
def good_output(capsys, world, tmp_path):
    home, model = world
    out = tmp_path / "out"
    assert run(capsys, "compress", model, "--recipe", home / "r.yaml", "--out", out, "--quiet")[0] == 0
    return home, model, out, tree(out)


def test_enospc_from_the_shard_writer(capsys, monkeypatch, good_output):
    from tensorpress.formats.safetensors_io import ShardWriter

    home, model, out, before = good_output
    real_add = ShardWriter.add
    calls = []

    def add(self, name, tensor):
        calls.append(name)
        if len(calls) == 5:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.folder / ".shard-00001.data"))
        return real_add(self, name, tensor)

    monkeypatch.setattr(ShardWriter, "add", add)
    rc, _, err = run(capsys, "compress", model, "--recipe", home / "r.yaml", "--out", out, "--force", "--quiet")
    refused(rc, err, f"--out {out}", "No space left on device", "nothing was replaced")
    assert len(calls) == 5 and tree(out) == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["home", "out"]


def test_failing_layer_mid_run(capsys, monkeypatch, good_output):
    from tensorpress.compressors.rtn import RTN as Rtn

    home, model, out, before = good_output
    real_apply = Rtn.apply

    def apply(self, work, names):
        if work.index == 1:
            raise RuntimeError("boom in layer 1")
        return real_apply(self, work, names)

    monkeypatch.setattr(Rtn, "apply", apply)
    rc, _, err = run(capsys, "compress", model, "--recipe", home / "r.yaml", "--out", out, "--force", "--quiet")
    assert rc == 1 and "boom in layer 1" in err and len(err.strip().splitlines()) == 1
    assert tree(out) == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["home", "out"]


def test_nan_layer_mid_run_is_a_clean_error(capsys, good_output):
    import torch
    from safetensors.torch import load_file, save_file

    home, model, out, before = good_output
    f = model / "model.safetensors"
    tensors = load_file(f)
    key = "model.layers.1.mlp.down_proj.weight"
    tensors[key] = tensors[key].clone()
    tensors[key][0, 0] = float("nan")
    save_file(tensors, f, metadata={"format": "pt"})
    rc, _, err = run(capsys, "compress", model, "--recipe", home / "r.yaml", "--out", out, "--force", "--quiet")
    refused(rc, err, key, "NaN")
    assert tree(out) == before and torch.isnan(load_file(f)[key]).any()
    assert sorted(p.name for p in out.parent.iterdir()) == ["home", "out"]


def test_a_live_lock_refuses_a_stale_lock_file_does_not(capsys, good_output):
    home, model, out, _ = good_output
    lock = lock_path(out)
    lock.write_text("999999\n")  # left by a run killed with -9: the file stays, its flock went with it
    assert run(capsys, "compress", model, "--recipe", home / "r.yaml", "--out", out, "--force", "--quiet")[0] == 0
    assert not lock.exists()
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    os.write(fd, b"4242\n")
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        now = tree(out)
        rc, _, err = run(capsys, "compress", model, "--recipe", home / "r.yaml", "--out", out, "--force")
        refused(rc, err, f"--out {out}", "another tensorpress run (pid 4242)")
        assert tree(out) == now
    finally:
        os.close(fd)
