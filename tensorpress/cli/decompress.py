"""`tensorpress decompress DIR --out DENSE_DIR`: any tensorpress output back to a plain checkpoint."""

from __future__ import annotations

import typer

from tensorpress.cli.options import Force, ModelArg, OutDir, Quiet

HELP = """Write a plain dense HF checkpoint from a compressed one (weights in the checkpoint's dtype).

Example:

    tensorpress decompress out --out out-dense
"""


def register(app: typer.Typer) -> None:
    app.command("decompress", help=HELP)(decompress_cmd)


def decompress_cmd(model: ModelArg, out: OutDir, force: Force = False, quiet: Quiet = False) -> None:
    from tensorpress.model.decompress import decompress

    path = decompress(model, out, force=force)
    if not quiet:
        typer.echo(f"wrote {path}")
