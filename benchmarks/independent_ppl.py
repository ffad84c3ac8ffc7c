"""Perplexity of a checkpoint through plain transformers (+ compressed-tensors for packed outputs),
with its own tokenization and windowing, to cross-check tensorpress's reports.

    python benchmarks/independent_ppl.py OUT [--text PATH] [--windows 48] [--seqlen 512]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", type=Path)
    ap.add_argument("--text", type=Path, default=Path.home() / ".cache/tensorpress/text/kjv-eval.txt")
    ap.add_argument("--windows", type=int, default=48)
    ap.add_argument("--seqlen", type=int, default=512)
    args = ap.parse_args()
    tok = AutoTokenizer.from_pretrained(str(args.model))
    model = AutoModelForCausalLM.from_pretrained(str(args.model), dtype=torch.float32).eval()
    ids = tok(args.text.read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"]
    nll, n = 0.0, 0
    for w in range(args.windows):
        window = torch.tensor([ids[w * args.seqlen : (w + 1) * args.seqlen]])
        with torch.no_grad():
            loss = model(input_ids=window, labels=window).loss  # mean NLL of the seqlen-1 predicted tokens
        nll += float(loss) * (args.seqlen - 1)
        n += args.seqlen - 1
    ppl = math.exp(nll / n)
    line = {"model": str(args.model), "ppl": ppl, "tokens": n}
    report = args.model / "report.json"
    if report.is_file():
        theirs = json.loads(report.read_text())["ppl"]
        line.update(report_ppl=theirs, relative_difference=ppl / theirs - 1)
    print(json.dumps(line))


if __name__ == "__main__":
    main()
