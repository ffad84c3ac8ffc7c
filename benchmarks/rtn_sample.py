"""RTN w4 g64 symmetric on the sample model: ppl base / compressed, KL, bits per weight on kjv:eval.

python benchmarks/rtn_sample.py [--windows 48] [--seqlen 512] [--out DIR]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import tensorpress
from tensorpress.model.sample import ensure_sample


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--windows", type=int, default=48)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    sample = ensure_sample()
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp) / "rtn"
        res = tensorpress.compress(
            sample.model, "rtn-w4g64", out, eval_text="kjv:eval", windows=args.windows, seqlen=args.seqlen, force=True
        )
        r = res.report
        head = f"{'recipe':<10} {'ppl base':>9} {'ppl':>9} {'KL':>7} {'top-1':>7} {'bits/w':>7} {'MiB':>7}"
        print(head + f" {'compress s':>10}")
        print(
            f"{'rtn-w4g64':<10} {r['ppl_base']:>9.3f} {r['ppl']:>9.3f} {r['kl']:>7.4f} {r['top1_agreement']:>7.2%} "
            f"{r['bits_per_weight']:>7.3f} {r['size_bytes'] / 2**20:>7.1f} {r['seconds']['compress']:>10.1f}"
        )
        print(f"tokens scored: {r['tokens']} ({args.windows} windows × {args.seqlen} of kjv:eval)")


if __name__ == "__main__":
    main()
