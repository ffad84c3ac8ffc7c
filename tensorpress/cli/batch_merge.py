"""`tensorpress batch-merge DIR... --out DIR`: shard outputs → one summary, as if the batch ran unsharded."""

from __future__ import annotations

from typing import Annotated

import typer

from tensorpress.cli.options import Force, OutDir, Quiet

HELP = """Merge the outputs of `tensorpress batch --shard K/N` runs of one matrix into one summary.

Example:

    tensorpress batch-merge shard1 shard2 --out merged
"""


def register(app: typer.Typer) -> None:
    app.command("batch-merge", help=HELP)(batch_merge_cmd)


def batch_merge_cmd(
    dirs: Annotated[list[str], typer.Argument(help="Batch output folders (one per shard).")],
    out: OutDir,
    force: Force = False,
    quiet: Quiet = False,
) -> int:
    from tensorpress.batch.merge import merge_batches
    from tensorpress.cli.batch import finish

    return finish(merge_batches(dirs, out, force=force), out, quiet)
