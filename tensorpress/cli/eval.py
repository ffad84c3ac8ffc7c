"""`tensorpress eval DIR [--base MODEL] [--text TEXT]`: perplexity, and KL/top-1 against a base."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from tensorpress.calibration.windows import EVAL_SEQLEN, EVAL_WINDOWS
from tensorpress.cli.options import (
    AllowLongContext,
    Device,
    Format,
    ModelArg,
    OutputFormat,
    Quiet,
    Seqlen,
    TextSpecs,
    Windows,
    progress_for,
)

HELP = """Evaluate DIR: perplexity on TEXT, and with a base model KL divergence and top-1 agreement.

Without --base, a tensorpress output is compared with the base it was compressed from, when that is
still where it was.

Example:

    tensorpress eval out --text kjv:eval --text novel.txt --windows 48 --seqlen 512 --format json
"""


def register(app: typer.Typer) -> None:
    app.command("eval", help=HELP)(eval_cmd)


def eval_cmd(
    model: ModelArg,
    base: Annotated[str | None, typer.Option(help="Base model to compare with (folder, .gguf or hub id).")] = None,
    text: TextSpecs = None,
    windows: Windows = EVAL_WINDOWS,
    seqlen: Seqlen = EVAL_SEQLEN,
    device: Device = "cpu",
    format: Format = OutputFormat.text,
    quiet: Quiet = False,
    allow_long_context: AllowLongContext = False,
) -> None:
    from pathlib import Path

    from tensorpress.evaluation.metrics import evaluate
    from tensorpress.model.checkpoint import recorded_base

    if base is None:
        recorded = recorded_base(model)
        if recorded and Path(recorded).is_dir():
            base = recorded
    texts = text or ["kjv:eval"]  # the sample's evaluation text
    metrics = evaluate(
        model,
        base,
        texts,
        windows,
        seqlen,
        device,
        progress_for(quiet or format == OutputFormat.json),
        allow_long_context=allow_long_context,
    )
    metrics["base"] = base
    if format == OutputFormat.json:
        typer.echo(json.dumps(metrics, indent=2))
        return
    for m in metrics["texts"]:
        line = f"ppl {m['ppl']:.4f} on {m['tokens']} tokens of {m['text']}"
        if "ppl_base" in m:
            line += f"; base ppl {m['ppl_base']:.4f}, KL {m['kl']:.4f}, top-1 agreement {m['top1_agreement']:.2%}"
        typer.echo(line)
