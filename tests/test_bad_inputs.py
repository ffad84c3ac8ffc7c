"""Hundreds of damaged or hostile inputs (generated in tests/damage.py), each refused the same way.

For every case: non-zero exit; exactly one line on stderr (`error: ...`, or Click's own `Error: ...`
after its usage line for usage mistakes) naming the culprit; no traceback, no "internal error"; every
input byte-identical afterwards; within 60 s and a 4 GiB address-space limit. All cases run in-process
(the CLI's `main` with pytest capturing stderr); the address-space limit is the process's own soft
RLIMIT_AS, lowered for this module only. Counts per class are printed at the end of the run
(`pytest tests/test_bad_inputs.py -q`), see `pytest_terminal_summary` in conftest.py.
"""

from __future__ import annotations

import contextlib
import faulthandler
import hashlib
import io
import os
import resource
import signal
import stat
import sys
import time
from pathlib import Path

import pytest

from tensorpress.cli.main import main
from tests.conftest import CORPUS, make_model, make_tokenizer, tiny_config
from tests.damage import GOOD_RECIPE, Bench, all_cases, copy_model, write

AS_LIMIT = 4 << 30
TIME_LIMIT = 60


def _safety_landed() -> bool:
    """Whether CLI usage errors are already Click's own messages (the other half of issue 14)."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            main(["eval", "x", "--windows", "0"])
    except Exception:  # TENSORPRESS_DEBUG=1 re-raises instead of printing
        return False
    return "internal error" not in err.getvalue()


CASES = all_cases(_safety_landed())


class CaseTimeout(BaseException):
    """BaseException, so the CLI's own `except Exception` cannot turn it into an error line."""


def _alarm(_signum, _frame):
    raise CaseTimeout(f"case took more than {TIME_LIMIT} s")


def digest(path: Path) -> str:
    """Content hash of a file or a folder tree; FIFOs and devices by their type only (never read)."""
    h = hashlib.sha256()
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return "missing"
    if stat.S_ISDIR(st.st_mode):
        for p in sorted(path.rglob("*")):
            h.update(str(p.relative_to(path)).encode())
            h.update(digest(p).encode())
        return h.hexdigest()
    if stat.S_ISLNK(st.st_mode):
        return f"link:{os.readlink(path)}"
    if not stat.S_ISREG(st.st_mode):
        return f"mode:{stat.S_IFMT(st.st_mode)}"
    h.update(path.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Bench:
    import json

    import tensorpress

    root = tmp_path_factory.mktemp("bench")
    model = make_model(root / "model", "llama")
    text = write(root / "corpus.txt", CORPUS)
    recipe = write(root / "rtn.yaml", GOOD_RECIPE)
    sharded = copy_model(model, root / "sharded")
    _split_shards(sharded)
    sym = tensorpress.compress(model, recipe, root / "sym").out
    asym = tensorpress.compress(
        model,
        {"steps": [{"rtn": {"bits": 4, "group_size": 32, "symmetric": False}, "ignore": ["lm_head"]}]},
        root / "asym",
    ).out
    coded = tensorpress.compress(
        model,
        {"steps": [{"rtn": {"bits": 4, "group_size": 32}, "ignore": ["lm_head"]}, {"entropy": {"level": "max"}}]},
        root / "coded",
    ).out
    other = _other_vocab(root / "other")
    assert json.loads((sym / "config.json").read_text())["quantization_config"]
    return Bench(model, sharded, sym, asym, coded, other, text, recipe)


def _split_shards(folder: Path) -> None:
    """Two shards + index: embeddings and layer 0 in the first, the rest in the second."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    single = folder / "model.safetensors"
    with safe_open(str(single), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    single.unlink()
    first = {k: v for k, v in tensors.items() if "embed" in k or ".layers.0." in k}
    second = {k: v for k, v in tensors.items() if k not in first}
    names = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")
    save_file(first, str(folder / names[0]), metadata=meta)
    save_file(second, str(folder / names[1]), metadata=meta)
    weight_map = {k: names[0] for k in first} | {k: names[1] for k in second}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def _other_vocab(folder: Path) -> Path:
    import torch
    from transformers import AutoModelForCausalLM

    cfg = tiny_config("llama")
    cfg.vocab_size = 300
    torch.manual_seed(1)
    AutoModelForCausalLM.from_config(cfg).to(torch.bfloat16).save_pretrained(str(folder))
    make_tokenizer(folder)
    return folder


@pytest.fixture(scope="module")
def limited(bench):
    """The 4 GiB address-space limit, for this module's cases only (the soft limit is restored after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    new = AS_LIMIT if hard == resource.RLIM_INFINITY else min(AS_LIMIT, hard)
    resource.setrlimit(resource.RLIMIT_AS, (new, hard))
    try:
        yield new
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _params():
    for c in CASES:
        marks = [pytest.mark.xfail(reason=c.xfail, strict=False)] if c.xfail else []
        yield pytest.param(c, id=c.id, marks=marks)


@pytest.mark.parametrize("case", list(_params()))
def test_bad_input(case, bench, limited, tmp_path, capsys):
    setup = case.build(bench, tmp_path)
    before = {str(p): digest(p) for p in setup.inputs}
    capsys.readouterr()
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(TIME_LIMIT)
    # SIGALRM cannot interrupt C code (a regex engine, a parser): past twice the limit, dump and exit.
    faulthandler.dump_traceback_later(2 * TIME_LIMIT, exit=True, file=sys.__stderr__)
    t0 = time.monotonic()
    try:
        rc = main(setup.argv)
    finally:
        faulthandler.cancel_dump_traceback_later()
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    elapsed = time.monotonic() - t0
    _, err = capsys.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc != 0, f"exit 0 for {setup.argv}"
    assert "Traceback" not in err and "internal error" not in err, err
    if setup.usage:
        errors = [ln for ln in lines if ln.startswith("Error:")]
        assert len(errors) == 1, err
        line = errors[0]
    else:
        assert len(lines) == 1, err
        line = lines[0]
        assert line.startswith("error: "), line
    for needle in setup.needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    assert {str(p): digest(p) for p in setup.inputs} == before, "an input changed"
    assert elapsed < TIME_LIMIT
