"""Text specs accepted everywhere a text is asked for, resolved to a plain string.

- a file path (UTF-8 text)
- `kjv:calib` / `kjv:eval`: the Old / New Testament of the offline sample
- `mix` / `mix:DOMAIN`: the shipped general calibration mix (calibration/mix.py), or one domain of it
- `hf:DATASET[:CONFIG[:SPLIT[:COLUMN]]]` and `wikitext2`: through the `datasets` package, where it is
  installed and the network allows

`TextPart` is what calibration and evaluation tokenize: one plain text, or one of the mix's weighted
source texts (calibration/mix.py), conversations rendered by the model's own chat template.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tensorpress.errors import TensorpressError
from tensorpress.infra.inputs import read_text_file

MAX_TEXT_BYTES = 4 << 30  # tokenizing more than this would not fit in memory anyway
DEFAULT_CALIBRATION = "mix"  # what a recipe calibrates on unless it names its texts
ALIASES = {"wikitext2": "hf:wikitext:wikitext-2-raw-v1:test:text"}


@dataclass(frozen=True)
class TextPart:
    name: str  # for messages and manifests: the spec, or mix:DOMAIN/SOURCE
    text: str
    weight: float = 1.0  # share of calibration windows before normalization


def read_text(spec: str) -> str:
    """One plain spec as text (the mix is resolved by calibration/mix.py, see `windows.text_parts`)."""
    spec = ALIASES.get(spec, spec)
    if spec in ("kjv:calib", "kjv:eval"):
        from tensorpress.model.sample import ensure_texts

        calib, evalp = ensure_texts()
        return (calib if spec == "kjv:calib" else evalp).read_text(encoding="utf-8")
    if spec.startswith("kjv:"):
        raise TensorpressError(f"text '{spec}': unknown (use kjv:calib or kjv:eval)")
    if spec.startswith("hf:"):
        return _hf_text(spec)
    path = Path(spec).expanduser()
    if not (path.exists() or path.is_symlink()):
        raise TensorpressError(
            f"text '{spec}': no such file (or use mix, mix:DOMAIN, kjv:calib, kjv:eval, hf:DATASET, wikitext2)"
        )
    # A FIFO or device is refused by its type (it would block or never end); binary and UTF-16 are named.
    return read_text_file(path, "text", MAX_TEXT_BYTES)


def _hf_text(spec: str) -> str:
    parts = spec[3:].split(":")
    if not parts[0]:
        raise TensorpressError(f"text '{spec}': expected hf:DATASET[:CONFIG[:SPLIT[:COLUMN]]]")
    name, config, split, column = (parts + [None] * 4)[:4]
    try:
        import datasets
    except ImportError as e:
        raise TensorpressError(f"text '{spec}': needs the 'datasets' package (pip install datasets)") from e
    try:
        ds = datasets.load_dataset(name, config or None, split=split or "test")
    except Exception as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise TensorpressError(f"text '{spec}': cannot load dataset ({msg})") from e
    column = column or "text"
    if column not in ds.column_names:
        raise TensorpressError(f"text '{spec}': no column '{column}' (has: {', '.join(ds.column_names)})")
    return "\n\n".join(ds[column])
