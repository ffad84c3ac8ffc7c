"""`tensorpress batch MATRIX --out DIR [--shard K/N]`: every model × recipe, resumable, with gates."""

from __future__ import annotations

from typing import Annotated

import typer

from tensorpress.cli.options import Device, OutDir, Quiet

HELP = """Run every model × recipe of the YAML MATRIX into DIR and write summary.{json,md,html} and junit.xml.

A rerun into the same DIR skips finished runs (same model, recipe content, eval settings and tensorpress
version) and redoes failed or interrupted ones; --force starts over instead, building the new batch aside
and replacing the old one only when complete. Exit code 1 when a run failed or a gate failed.

Example matrix:

    models: [~/.cache/tensorpress/models/SmolLM2-135M-Instruct]
    recipes: [rtn-w4g64, my-gptq.yaml]
    eval: {text: kjv:eval, windows: 48, seqlen: 512}
    gates: [{metric: ppl_increase_pct, max: 30}, {metric: bits_per_weight, max: 4.5}]
"""


def register(app: typer.Typer) -> None:
    app.command("batch", help=HELP)(batch_cmd)


def batch_cmd(
    matrix: Annotated[str, typer.Argument(help="The batch matrix (YAML).")],
    out: OutDir,
    shard: Annotated[
        str | None, typer.Option("--shard", help="Run only shard K of N (K/N) of the matrix, e.g. 1/2.")
    ] = None,
    device: Device = "cpu",
    force: Annotated[
        bool,
        typer.Option("--force", help="Start over: build the whole batch aside and replace an earlier one in DIR."),
    ] = False,
    quiet: Quiet = False,
) -> int:
    from tensorpress.batch.matrix import load_matrix, parse_shard
    from tensorpress.batch.runner import run_batch
    from tensorpress.infra.progress import auto_progress

    spec = load_matrix(matrix)
    summary = run_batch(spec, out, shard=parse_shard(shard), device=device, progress=auto_progress(quiet), force=force)
    return finish(summary, out, quiet)


def finish(summary: dict, out, quiet: bool) -> int:
    """Print the summary table (unless quiet) and return the exit code: 1 when a run or a gate failed."""
    if not quiet:
        from tensorpress.batch.summary import render_markdown

        typer.echo(render_markdown(summary))
        typer.echo(f"summary: {out / 'summary.md'} (also summary.json, summary.html, junit.xml)")
    return 0 if summary["ok"] else 1
