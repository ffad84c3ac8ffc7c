"""The shipped calibration mix, built for real from its pinned PyPI archives: every hash in the manifest
reproduces, conversations carry the sample model's chat template, and windows cover every domain."""

from __future__ import annotations

import hashlib

import pytest

from tensorpress.calibration import mix
from tensorpress.calibration.windows import calibration_windows, decode_windows, load_tokenizer

pytestmark = pytest.mark.e2e


def test_mix_builds_reproducibly_and_renders_chats(sample):
    every = mix.manifest()["sources"]
    assert {s.domain for s in every} == {"english", "dialog", "code", "languages", "structured"}
    for s in every:
        text = mix.build(s)  # checks the archive's and the text's sha256 against the manifest
        assert hashlib.sha256(text.encode()).hexdigest() == s.text_sha256
    assert sum(mix.source_weights(every)) == pytest.approx(1.0)

    tok = load_tokenizer(sample.model)
    dialog = mix.mix_parts("mix:dialog", tok)
    assert all(p.text.count("<|im_start|>assistant") > 100 for p in dialog)  # SmolLM2's own template
    windows = calibration_windows("mix", tok, 40, 128, 0)
    assert windows.shape == (40, 128)
    texts = decode_windows(windows, tok)
    assert any("<|im_start|>" in t for t in texts)  # dialog windows
    assert any("def " in t or "#include" in t or "return" in t for t in texts)  # code windows
    assert any(any("\u0400" <= ch <= "\u04ff" for ch in t) for t in texts)  # Ukrainian (Cyrillic)
