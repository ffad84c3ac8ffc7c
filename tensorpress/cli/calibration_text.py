"""`tensorpress calibration-text MODEL --out FILE`: the exact calibration text a run tokenizes, for other tools."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from tensorpress.cli.options import Force, ModelArg, TextSpecs


class TextFormat(str, Enum):
    text = "text"
    jsonl = "jsonl"


HELP = """Write the calibration windows a recipe would use on MODEL as plain text, so llama-imatrix,
llm-compressor or your own script can calibrate on exactly what tensorpress used.

The windows are those of the recipe's `calibration` (the shipped mix by default, conversations rendered
with MODEL's chat template), or of --text (repeat for several, equal weights). `--format text` writes
them one after another (what `llama-imatrix -f FILE -c SEQLEN` chunks again); `jsonl` writes one
`{"text": …}` per window (a dataset for llm-compressor).

Example:

    tensorpress calibration-text MODEL --recipe default --out calib.txt
"""


def register(app: typer.Typer) -> None:
    app.command("calibration-text", help=HELP)(calibration_text_cmd)


def calibration_text_cmd(
    model: ModelArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="File to write (atomically).")],
    recipe: Annotated[str, typer.Option("--recipe", "-r", help="Recipe whose calibration to write.")] = "default",
    text: TextSpecs = None,
    samples: Annotated[int | None, typer.Option(min=1, help="Windows (default: the recipe's).")] = None,
    seqlen: Annotated[int | None, typer.Option(min=2, help="Tokens per window (default: the recipe's).")] = None,
    seed: Annotated[int | None, typer.Option(help="Sampling seed (default: the recipe's).")] = None,
    format: Annotated[TextFormat, typer.Option("--format", help="text or jsonl.")] = TextFormat.text,
    force: Force = False,
) -> None:
    from tensorpress.calibration.windows import calibration_windows, decode_windows, load_tokenizer
    from tensorpress.errors import TensorpressError
    from tensorpress.infra.atomic import write_text_atomic
    from tensorpress.infra.outputs import check_apart, input_paths
    from tensorpress.model.checkpoint import resolve_folder
    from tensorpress.pipeline.recipe import find_recipe, load_recipe

    recipe_path = find_recipe(recipe)
    c = load_recipe(recipe_path).calibration
    sources = [(t, 1.0) for t in text] if text else c.sources
    if out.is_dir():
        raise TensorpressError(f"--out {out}: is a folder; give a file name")
    if (out.exists() or out.is_symlink()) and not force:
        raise TensorpressError(f"--out {out}: exists; pass --force to replace it")
    check_apart(out, input_paths(model, recipe_path, *(s for s, _ in sources)))
    folder = resolve_folder(model)
    check_apart(out, [folder])
    tokenizer = load_tokenizer(folder)
    windows = calibration_windows(
        sources, tokenizer, samples or c.samples, seqlen or c.seqlen, c.seed if seed is None else seed
    )
    texts = decode_windows(windows, tokenizer)
    if format == TextFormat.jsonl:
        body = "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts)
    else:
        body = "".join(texts)
    write_text_atomic(out, body)
    typer.echo(f"wrote {out}: {len(texts)} windows × {windows.shape[1]} tokens")
