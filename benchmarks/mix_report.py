"""The calibration mix, source by source: characters, tokens under the sample model's tokenizer, license,
and the sha256 of the text built from the pinned archive.

    python benchmarks/mix_report.py             # print the table (and whether each hash matches the manifest)
    python benchmarks/mix_report.py --update    # maintainers: write the built texts' hashes into mix.json

`--update` is for when a source is added or changed in tensorpress/calibration/mix.json: the archive
hash is checked as always, and the text hash recorded is what every later build must reproduce.
"""

from __future__ import annotations

import argparse
import hashlib
import json

from tensorpress.calibration import mix
from tensorpress.calibration.windows import load_tokenizer, tokenize
from tensorpress.model.sample import ensure_sample


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--update", action="store_true", help="write the built texts' sha256 into the manifest")
    args = ap.parse_args()
    tok = load_tokenizer(ensure_sample().model)
    raw = json.loads(mix.MANIFEST.read_text(encoding="utf-8"))
    print("| domain | source | package | chars | tokens | share of windows | license | hash |")
    print("|---|---|---|---|---|---|---|---|")
    every = mix.manifest()["sources"]
    for entry, source, share in zip(raw["sources"], every, mix.source_weights(every), strict=True):
        text = mix.read_source(source)
        sha = hashlib.sha256(text.encode("utf-8")).hexdigest()
        body = mix.render_dialogs(json.loads(text), tok) if source.dialog else text
        n = tokenize(body, tok).numel()
        ok = "ok" if sha == source.text_sha256 else "CHANGED" if source.text_sha256 else "new"
        print(
            f"| {source.domain} | {source.name} | {source.requirement} | {len(body):,} | {n:,} | {share:.1%} "
            f"| {source.license} | {ok} |"
        )
        entry["text_sha256"] = sha
    if args.update:
        mix.MANIFEST.write_text(json.dumps(raw, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"wrote {mix.MANIFEST}")


if __name__ == "__main__":
    main()
