"""Options shared by several commands, declared once as `Annotated` aliases."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer


class OutputFormat(str, Enum):
    text = "text"
    json = "json"


Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or summaries; errors only.")]


def _device(value: str) -> str:
    """Checked while parsing, before any work: one line naming the devices this machine has."""
    from tensorpress.infra.devices import check_device

    return check_device(value)


Device = Annotated[str, typer.Option("--device", callback=_device, help="Where to compute: cpu, cuda or cuda:N.")]
Force = Annotated[
    bool,
    typer.Option("--force", help="Replace --out if it is an earlier tensorpress output (never any other folder)."),
]
Windows = Annotated[int, typer.Option("--windows", min=1, help="Evaluation windows (non-overlapping).")]
Seqlen = Annotated[int, typer.Option("--seqlen", min=2, help="Tokens per evaluation window.")]
AllowLongContext = Annotated[
    bool,
    typer.Option(
        "--allow-long-context",
        help="Allow windows longer than the model's max_position_embeddings (the numbers may be meaningless).",
    ),
]
Format = Annotated[OutputFormat, typer.Option("--format", help="text for people, json for scripts.")]
OutDir = Annotated[Path, typer.Option("--out", "-o", help="Output folder (written atomically).")]
ModelArg = Annotated[str, typer.Argument(help="HF checkpoint folder, .gguf file, or hub id.")]
TEXT_HELP = "a text file, mix, mix:DOMAIN, kjv:calib, kjv:eval, hf:DATASET[:CONFIG[:SPLIT[:COLUMN]]] or wikitext2"
TextSpecs = Annotated[list[str] | None, typer.Option("--text", help=f"Text(s), repeat for several: {TEXT_HELP}.")]


def progress_for(quiet: bool):
    """Bars on a terminal, a plain line per event in logs (CI, `| tee`), nothing when quiet."""
    from tensorpress.infra.progress import auto_progress

    return auto_progress(quiet)
