"""`tensorpress list`: the registered compressors, their config fields with defaults, shipped recipes."""

from __future__ import annotations

import json

import typer

from tensorpress.cli.options import Format, OutputFormat

HELP = """List compressors (with their config fields and defaults) and the shipped recipes.

Example:

    tensorpress list --format json
"""


def register(app: typer.Typer) -> None:
    app.command("list", help=HELP)(list_cmd)


def list_cmd(format: Format = OutputFormat.text) -> None:
    from tensorpress.compressors import REGISTRY
    from tensorpress.compressors.base import config_fields
    from tensorpress.pipeline.recipe import builtin_recipes

    data = {
        "compressors": {
            name: {
                "summary": cls.summary,
                "needs_calibration": cls.needs_calibration,
                "fields": [{"name": f, "type": t, "default": d} for f, t, d in config_fields(cls.Config)],
            }
            for name, cls in sorted(REGISTRY.items())
        },
        "recipes": sorted(builtin_recipes()),
    }
    if format == OutputFormat.json:
        typer.echo(json.dumps(data, indent=2))
        return
    for name, c in data["compressors"].items():
        calib = " (calibrated)" if c["needs_calibration"] else ""
        typer.echo(f"{name}{calib}: {c['summary']}")
        for f in c["fields"]:
            typer.echo(f"    {f['name']}: {f['type']} = {f['default']!r}")
    typer.echo("recipes: " + ", ".join(data["recipes"]))
