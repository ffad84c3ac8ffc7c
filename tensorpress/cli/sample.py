"""`tensorpress sample`: fetch (once) the offline sample model and texts, print their paths."""

from __future__ import annotations

import typer

HELP = """Put the sample model (SmolLM2-135M-Instruct as bf16 safetensors) and the KJV texts
(kjv-calib.txt: Old Testament, kjv-eval.txt: New Testament) in the cache, and print their paths.

Idempotent. The cache is $TENSORPRESS_CACHE, else $XDG_CACHE_HOME/tensorpress.

Example:

    tensorpress sample
"""


def register(app: typer.Typer) -> None:
    app.command("sample", help=HELP)(sample_cmd)


def sample_cmd() -> None:
    from tensorpress.model.sample import ensure_sample

    paths = ensure_sample()
    typer.echo(f"model: {paths.model}")
    typer.echo(f"calib: {paths.calib}")
    typer.echo(f"eval:  {paths.eval}")
