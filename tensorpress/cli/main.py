"""Wires the commands together and owns the one top-level error handler.

- a usage mistake (unknown option, bad value, missing argument) is Click's own message with the usage line,
  exit 2 — Typer raises it as a `TyperException` subclass (Typer vendors Click);
- a `TensorpressError` is a one-line `error: ...`, exit 2;
- an `OSError` (disk full, permission, read-only file system) is one line naming the file, exit 2;
- anything else is a bug and says so, exit 1. `TENSORPRESS_DEBUG=1` shows the traceback instead.
"""

from __future__ import annotations

import os
import sys
import warnings

import typer

from tensorpress.cli import (
    batch,
    batch_merge,
    calibration_text,
    compress,
    decompress,
    eval,
    inspect,
    list_cmd,
    sample,
)
from tensorpress.errors import TensorpressError, TensorpressWarning

app = typer.Typer(
    name="tensorpress",
    help="Compress Hugging Face language-model checkpoints with YAML recipes, and measure what it cost.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="markdown",
)
for module in (compress, eval, calibration_text, inspect, decompress, list_cmd, sample, batch, batch_merge):
    module.register(app)


def _usage_errors() -> tuple[type[Exception], ...]:
    """Typer ≥ 0.2x vendors Click (its errors derive from `typer.TyperException`); older ones use click."""
    found: list[type[Exception]] = [typer.TyperException] if hasattr(typer, "TyperException") else []
    try:
        import click

        found.append(click.ClickException)
    except ImportError:
        pass
    return tuple(found)


USAGE_ERRORS = _usage_errors()


def main(argv: list[str] | None = None) -> int:
    debug = os.environ.get("TENSORPRESS_DEBUG") == "1"
    if not debug:
        # Library chatter (progress bars, load reports) would drown our own one-line messages.
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        with warnings.catch_warnings():
            if not debug:
                warnings.showwarning = _warning_line
            rc = app(args=argv, prog_name="tensorpress", standalone_mode=False)
        return rc if isinstance(rc, int) else 0
    except TensorpressError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except typer.Exit as e:
        return e.exit_code
    except (typer.Abort, KeyboardInterrupt):
        print("error: interrupted", file=sys.stderr)
        return 130
    except USAGE_ERRORS as e:
        show = getattr(e, "show", None)
        if show is not None:
            show()  # "Usage: ...", "Try '... --help'", "Error: ..."
        else:
            print(f"error: {e.format_message()}", file=sys.stderr)
        return e.exit_code
    except OSError as e:
        if debug:
            raise
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except Exception as e:
        if debug:
            raise
        print(
            f"error: internal error: {type(e).__name__}: {e} (TENSORPRESS_DEBUG=1 shows the traceback)", file=sys.stderr
        )
        return 1


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    """Our own warnings as one `warning: ...` line; library warnings only with TENSORPRESS_DEBUG=1."""
    if issubclass(category, TensorpressWarning):
        print(f"warning: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
