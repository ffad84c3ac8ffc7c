"""kill -9 at many moments of `--force` runs onto a good earlier output; two runs racing onto one --out.

Every run is a real process (forked from `tests/forkserver.py`, which pays the torch imports once) killed
with a real SIGKILL: while the new tree is being written (random delays after its temporary folder
appears), exactly before and after the swap (`TENSORPRESS_TEST_KILL_AT`), and between the two renames of
the fallback swap. After each kill `--out` must be byte-identical to the earlier output or to a complete
new one, never a mix; the next run must clean what the killed one left.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tensorpress.infra.outputs import MARKER

ROOT = Path(__file__).resolve().parent.parent
W4 = "name: w4\nsteps:\n  - rtn: {bits: 4, group_size: 32}\n    ignore: [lm_head]\n"
W8 = "name: w8\nsteps:\n  - rtn: {bits: 8, group_size: 32}\n    ignore: [lm_head]\n"
RNG = random.Random(14)
OUTCOMES: list[tuple[str, str, str]] = []  # (command, moment, outcome), printed at the end


class Server:
    def __init__(self, log_dir: Path):
        # One thread per run: the children share 2 cores with the test and each other.
        env = dict(os.environ, PYTHONPATH=str(ROOT), TRANSFORMERS_VERBOSITY="error", OMP_NUM_THREADS="1")
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "forkserver.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.log_dir = log_dir
        self.n = 0
        assert "ready" in self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        assert line, "fork server died"
        return json.loads(line)

    def _ask(self, **req) -> dict:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def start(self, *argv, env: dict | None = None) -> tuple[int, Path]:
        self.n += 1
        log = self.log_dir / f"run{self.n}.log"
        pid = self._ask(op="run", argv=[str(a) for a in argv], env=env or {}, log=str(log))["pid"]
        return pid, log

    def wait(self, pid: int) -> int:
        return self._ask(op="wait", pid=pid)["status"]

    def run(self, *argv, env: dict | None = None) -> tuple[int, str]:
        pid, log = self.start(*argv, env=env)
        return self.wait(pid), log.read_text()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def tree(folder: Path) -> dict[str, str]:
    """Relative path → sha256 of every file (the marker included)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def kill_when_building(server: Server, out: Path, argv: list, delay: float) -> str:
    """Start a run, wait for its temporary folder, SIGKILL it `delay` s later; how it ended."""
    pid, log = server.start(*argv)
    t0 = time.monotonic()
    while not any(n.startswith(f".{out.name}.partial-") for n in leftovers(out)):
        if time.monotonic() - t0 > 60:
            break
        time.sleep(0.002)
    time.sleep(delay)
    os.kill(pid, signal.SIGKILL)
    status = server.wait(pid)
    return "killed" if status == -signal.SIGKILL else f"exit {status}: {log.read_text()[-300:]}"


def classify(out: Path, old: dict, new: dict) -> str:
    if not out.exists():
        return "missing"
    t = tree(out)
    return "old" if t == old else "new" if t == new else "MIX"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("logs"))
    yield s
    s.close()
    for cmd, moment, outcome in OUTCOMES:
        print(f"kill -9 {cmd} {moment}: {outcome}")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A 12-layer tiny Llama (long enough a layer loop to be killed inside), two recipes, a text."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from tests.conftest import CORPUS, make_tokenizer

    root = tmp_path_factory.mktemp("crash")
    import torch

    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=12,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        vocab_size=320,
    )
    AutoModelForCausalLM.from_config(cfg).to(torch.bfloat16).save_pretrained(root / "model")
    make_tokenizer(root / "model")
    (root / "w4.yaml").write_text(W4)
    (root / "w8.yaml").write_text(W8)
    (root / "text.txt").write_text(CORPUS)
    return root


def compress_argv(world: Path, recipe: str, out: Path) -> list:
    return ["compress", world / "model", "--recipe", world / recipe, "--out", out, "--force", "--quiet"]


@pytest.fixture(scope="module")
def outputs(server, world, tmp_path_factory) -> dict[str, Path]:
    """Good compress outputs of both recipes, made once (their bytes do not depend on the folder)."""
    root = tmp_path_factory.mktemp("outputs")
    for name in ("w4", "w8"):
        assert server.run(*compress_argv(world, f"{name}.yaml", root / name))[0] == 0
    return {"w4": root / "w4", "w8": root / "w8"}


def test_kill_compress_at_every_moment(server, world, outputs, tmp_path):
    out, pristine = tmp_path / "out", outputs["w4"]
    shutil.copytree(pristine, out)
    old, new = tree(pristine), tree(outputs["w8"])
    assert old != new and MARKER in old
    new_argv = compress_argv(world, "w8.yaml", out)

    def reset() -> None:
        for name in leftovers(out):
            junk = out.parent / name
            shutil.rmtree(junk) if junk.is_dir() else junk.unlink()
        if tree(out) != old:
            shutil.rmtree(out)
            shutil.copytree(pristine, out)

    seen = set()
    for delay in [0.0, *(RNG.uniform(0, 1.0) for _ in range(3))]:
        reset()
        how = kill_when_building(server, out, new_argv, delay)
        outcome = classify(out, old, new)
        OUTCOMES.append(("compress", f"{delay:.3f}s after the temporary folder appeared", f"{how}, {outcome}"))
        assert outcome in ("old", "new"), how
        seen.add(outcome)
    assert "old" in seen  # at least one kill landed mid-write and changed nothing

    for moment, expect in (("before-swap", "old"), ("after-swap", "new")):
        reset()
        status, _ = server.run(*new_argv, env={"TENSORPRESS_TEST_KILL_AT": moment})
        outcome = classify(out, old, new)
        OUTCOMES.append(("compress", moment, f"status {status}, {outcome}, leftovers {leftovers(out)}"))
        assert status == -signal.SIGKILL and outcome == expect

    # The fallback swap (no renameat2): killed between its two renames, --out is missing for an instant;
    # the earlier output sits complete beside it and the next run puts it back before anything else.
    reset()
    env = {"TENSORPRESS_TEST_KILL_AT": "between-renames", "TENSORPRESS_TEST_NO_EXCHANGE": "1"}
    status, _ = server.run(*new_argv, env=env)
    aside = [n for n in leftovers(out) if ".old-" in n]
    assert status == -signal.SIGKILL and not out.exists() and len(aside) == 1
    assert tree(out.parent / aside[0]) == old
    OUTCOMES.append(("compress", "between-renames (fallback swap)", f"--out missing, aside intact: {aside[0]}"))
    # A run that fails before writing (bad recipe) still recovers the aside output and cleans up.
    (world / "bad.yaml").write_text("steps: [{rtn: {bits: 99}}]\n")
    status, log = server.run("compress", world / "model", "--recipe", world / "bad.yaml", "--out", out, "--force")
    assert status == 2 and "bits" in log
    assert classify(out, old, new) == "old" and leftovers(out) == []

    # Leftovers of several killed runs at once are cleaned by the next good run.
    kill_when_building(server, out, new_argv, 0.05)
    assert server.run(*new_argv)[0] == 0
    assert classify(out, old, new) == "new" and leftovers(out) == []


def test_two_runs_racing_onto_one_out(server, world, tmp_path):
    out = tmp_path / "out"
    argv = compress_argv(world, "w8.yaml", out)
    runs = [server.start(*argv) for _ in range(2)]
    statuses = [server.wait(pid) for pid, _ in runs]
    logs = [log.read_text() for _, log in runs]
    OUTCOMES.append(("compress", "two at once onto one --out", f"statuses {statuses}"))
    assert sorted(statuses) == [0, 2], logs
    loser = logs[statuses.index(2)]
    assert "another tensorpress run" in loser and str(out) in loser and len(loser.strip().splitlines()) == 1
    assert (out / "model.safetensors").is_file() and leftovers(out) == []


def test_kill_decompress(server, outputs, tmp_path):
    src, out, ref = outputs["w4"], tmp_path / "out", tmp_path / "ref"
    assert server.run("decompress", outputs["w8"], "--out", out, "--quiet")[0] == 0
    old = tree(out)
    assert server.run("decompress", src, "--out", ref, "--quiet")[0] == 0
    new = tree(ref)
    for delay in (0.0, RNG.uniform(0, 0.5)):
        how = kill_when_building(server, out, ["decompress", src, "--out", out, "--force", "--quiet"], delay)
        outcome = classify(out, old, new)
        OUTCOMES.append(("decompress", f"{delay:.3f}s after the temporary folder appeared", f"{how}, {outcome}"))
        assert outcome in ("old", "new")
    status, _ = server.run(
        "decompress", src, "--out", out, "--force", "--quiet", env={"TENSORPRESS_TEST_KILL_AT": "before-swap"}
    )
    assert status == -signal.SIGKILL and classify(out, old, new) in ("old", "new")
    assert server.run("decompress", src, "--out", out, "--force", "--quiet")[0] == 0
    assert classify(out, old, new) == "new" and leftovers(out) == []


def batch_files(folder: Path) -> set[str]:
    return {k for k in tree(folder) if not k.endswith(".log")}


def test_kill_batch_and_batch_merge(server, world, tmp_path):
    """A `batch --force` builds the whole new batch aside; batch-merge writes its summary the same way."""
    matrices = {}
    for name, recipe in (("old", "w4.yaml"), ("new", "w8.yaml")):
        m = world / f"matrix-{name}.yaml"
        m.write_text(
            f"models: [{world / 'model'}]\nrecipes: [{world / recipe}]\n"
            f"eval: {{text: {world / 'text.txt'}, windows: 2, seqlen: 16}}\n"
        )
        matrices[name] = m
    out, ref = tmp_path / "out", tmp_path / "ref"
    assert server.run("batch", matrices["old"], "--out", out, "--quiet")[0] == 0
    old = tree(out)
    assert server.run("batch", matrices["new"], "--out", ref, "--quiet")[0] == 0
    new_names = set(tree(ref))

    def outcome() -> str:
        t = tree(out)
        if t == old:
            return "old"
        s = json.loads((out / "summary.json").read_text())
        if set(t) == new_names and s["runs"][0]["status"] == "ok" and "w8" in s["runs"][0]["recipe"]:
            return "new"
        return "MIX"

    argv = ["batch", matrices["new"], "--out", out, "--force", "--quiet"]
    for delay in (RNG.uniform(0, 0.5), RNG.uniform(0.5, 1.5)):
        how = kill_when_building(server, out, argv, delay)
        got = outcome()
        OUTCOMES.append(("batch", f"{delay:.3f}s after the temporary folder appeared", f"{how}, {got}"))
        assert got in ("old", "new")
    status, _ = server.run(*argv, env={"TENSORPRESS_TEST_KILL_AT": "before-swap"})
    assert status == -signal.SIGKILL and outcome() in ("old", "new")
    assert server.run(*argv)[0] == 0 and outcome() == "new" and leftovers(out) == []

    merged = tmp_path / "merged"
    assert server.run("batch-merge", out, "--out", merged, "--quiet")[0] in (0, 1)
    before = tree(merged)
    for moment in ("before-swap", "after-swap"):
        status, _ = server.run(
            "batch-merge", ref, "--out", merged, "--force", "--quiet", env={"TENSORPRESS_TEST_KILL_AT": moment}
        )
        got = "old" if tree(merged) == before else "new" if "w8" in (merged / "summary.json").read_text() else "MIX"
        OUTCOMES.append(("batch-merge", moment, f"status {status}, {got}"))
        assert status == -signal.SIGKILL and got == ("old" if moment == "before-swap" else "new")
    assert server.run("batch-merge", ref, "--out", merged, "--force", "--quiet")[0] in (0, 1)
    assert leftovers(merged) == [] and leftovers(out) == []
