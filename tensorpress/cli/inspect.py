"""`tensorpress inspect PATH`: tensors, dtypes, shapes, bytes, bits per weight, the stored recipe."""

from __future__ import annotations

import json

import typer

from tensorpress.cli.options import Format, OutputFormat

HELP = """Show what a checkpoint folder or .safetensors file holds.

Example:

    tensorpress inspect out --format json
"""


def register(app: typer.Typer) -> None:
    app.command("inspect", help=HELP)(inspect_cmd)


def inspect_cmd(
    path: str = typer.Argument(..., help="Checkpoint folder or .safetensors file."), format: Format = OutputFormat.text
) -> None:
    from tensorpress.inspection import inspect_path

    info = inspect_path(path)
    if format == OutputFormat.json:
        typer.echo(json.dumps(info, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table("tensor", "dtype", "shape", "bytes")
    for t in info["tensors"]:
        table.add_row(t["name"], t["dtype"], "×".join(map(str, t["shape"])) or "scalar", f"{t['bytes']:,}")
    console.print(table)
    mods = Table("module", "scheme", "bits/weight")
    for m in info["quantized"]:
        mods.add_row(m["name"], m["scheme"], f"{m['bits_per_weight']:.3f}")
    if info["quantized"]:
        console.print(mods)
    s = info["summary"]
    console.print(
        f"{s['tensors']} tensors, {s['size_bytes']:,} bytes; "
        + (
            f"{s['quantized_modules']} quantized modules at {s['bits_per_weight']:.3f} bits/weight"
            if s["bits_per_weight"]
            else "no quantized modules"
        )
    )
    if info.get("recipe"):
        console.print("recipe:", json.dumps(info["recipe"]), highlight=False)
