"""`tensorpress compress MODEL --recipe RECIPE --out DIR [--eval TEXT]`."""

from __future__ import annotations

from typing import Annotated

import typer

from tensorpress.calibration.windows import EVAL_SEQLEN, EVAL_WINDOWS
from tensorpress.cli.options import (
    AllowLongContext,
    Device,
    Force,
    ModelArg,
    OutDir,
    Quiet,
    Seqlen,
    Windows,
    progress_for,
)

HELP = """Compress MODEL with RECIPE into DIR (packed safetensors), optionally evaluating it.

Example:

    tensorpress compress ~/.cache/tensorpress/models/SmolLM2-135M-Instruct --recipe rtn-w4g64 --out out --eval kjv:eval
"""


def register(app: typer.Typer) -> None:
    app.command("compress", help=HELP)(compress_cmd)


def compress_cmd(
    model: ModelArg,
    recipe: Annotated[str, typer.Option("--recipe", "-r", help="Recipe file, or the name of a shipped recipe.")],
    out: OutDir,
    eval_text: Annotated[
        list[str] | None,
        typer.Option("--eval", help="Evaluate on this text afterwards (e.g. kjv:eval; repeat for several): report.*"),
    ] = None,
    windows: Windows = EVAL_WINDOWS,
    seqlen: Seqlen = EVAL_SEQLEN,
    device: Device = "cpu",
    seed: Annotated[int | None, typer.Option(help="Calibration seed (overrides the recipe's).")] = None,
    force: Force = False,
    quiet: Quiet = False,
    allow_long_context: AllowLongContext = False,
    target_bpw: Annotated[
        float | None,
        typer.Option("--target-bpw", help="Automatic mixed precision: bits per quantized weight to fit (e.g. 3.5)."),
    ] = None,
    target_size: Annotated[
        str | None,
        typer.Option("--target-size", help="Automatic mixed precision: total size of the weight files (e.g. 90MB)."),
    ] = None,
) -> None:
    from tensorpress.pipeline.run import compress

    result = compress(
        model,
        recipe,
        out,
        eval_text=eval_text,
        windows=windows,
        seqlen=seqlen,
        device=device,
        seed=seed,
        force=force,
        progress=progress_for(quiet),
        allow_long_context=allow_long_context,
        target_bpw=target_bpw,
        target_size=target_size,
    )
    if quiet:
        return
    for note in result.notes:
        typer.echo(f"note: {note}", err=True)
    r = result.report
    if r:
        typer.echo(
            f"ppl {r['ppl_base']:.3f} → {r['ppl']:.3f} ({r['ppl_increase_pct']:+.2f}%), KL {r['kl']:.4f}, "
            f"top-1 {r['top1_agreement']:.2%}, {r['bits_per_weight'] or 0:.3f} bits/weight, "
            f"{r['size_bytes_base'] / 2**20:.1f} → {r['size_bytes'] / 2**20:.1f} MiB"
        )
        for t in r["texts"][1:]:
            typer.echo(
                f"  {t['text']}: ppl {t['ppl_base']:.3f} → {t['ppl']:.3f} ({t['ppl_increase_pct']:+.2f}%), "
                f"KL {t['kl']:.4f}, top-1 {t['top1_agreement']:.2%}"
            )
        typer.echo(f"report: {result.out / 'report.md'}")
    typer.echo(f"wrote {result.out}")
