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
    from tensorpress.formats.inspection import inspect_path

    info = inspect_path(path)
    if format == OutputFormat.json:
        typer.echo(json.dumps(info, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    coded = "entropy" in info["summary"]
    table = Table("tensor", "dtype", "shape", "bytes", *(["raw bytes", "ratio"] if coded else []))
    for t in info["tensors"]:
        row = [t["name"], t["dtype"], "×".join(map(str, t["shape"])) or "scalar", f"{t['bytes']:,}"]
        if coded:
            row += [f"{t['raw_bytes']:,}", f"{t['ratio']:.4f}" if t.get("ratio") is not None else "-"]
        table.add_row(*row)
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
    if coded:
        e = s["entropy"]
        console.print(
            f"entropy-coded: {e['coded_tensors']} tensors, {e['raw_bytes']:,} → {e['coded_bytes']:,} bytes "
            f"(ratio {e['ratio']:.4f})"
        )
    if info.get("recipe"):
        console.print("recipe:", json.dumps(info["recipe"]), highlight=False)
