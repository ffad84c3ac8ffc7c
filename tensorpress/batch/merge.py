"""`tensorpress batch-merge`: shard outputs (summary.json + run folders) → one summary, as if run unsharded.

Only the reports travel (report.{json,md,html} and run.json of every run); the compressed weights stay
where the shards wrote them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tensorpress.batch.summary import build_summary, write_summary
from tensorpress.errors import TensorpressError
from tensorpress.infra.outputs import OutputClaim, input_paths

REPORT_FILES = ("run.json", "report.json", "report.md", "report.html")


def merge_batches(dirs: list[str | Path], out: str | Path, force: bool = False) -> dict:
    """Merge batch output folders of one matrix into `out` (atomically); returns the merged summary."""
    out = Path(out)
    if not dirs:
        raise TensorpressError("batch-merge: give at least one batch output folder")
    with OutputClaim(out, "batch-merge", force, input_paths(*dirs)) as claim:
        return _merge(dirs, claim)


def _merge(dirs: list[str | Path], claim: OutputClaim) -> dict:
    loaded = []
    for d in map(Path, dirs):
        try:
            loaded.append((d, json.loads((d / "summary.json").read_text())))
        except OSError as e:
            raise TensorpressError(f"{d}: no summary.json ({e.strerror}); is it a `tensorpress batch` output?") from e
        except ValueError as e:
            raise TensorpressError(f"{d / 'summary.json'}: not valid JSON") from e
    matrix = loaded[0][1]["matrix"]
    for d, s in loaded[1:]:
        if s.get("matrix") != matrix:
            raise TensorpressError(
                f"{d}: ran another matrix than {loaded[0][0]} (models, recipes, eval or gates differ)"
            )
    records: dict[int, tuple[Path, dict]] = {}
    shards: set[str] = set()
    for d, s in loaded:
        shards.update(s.get("shards") or ["1/1"])
        for run in s["runs"]:
            if run["index"] in records:
                raise TensorpressError(f"{d}: run {run['id']} is also in {records[run['index']][0]}")
            records[run["index"]] = (d, run)
    summary = build_summary(matrix, [run for _, run in records.values()], sorted(shards), expect_all=True)
    with claim.build() as tmp:
        for d, run in records.values():
            src, dst = d / run["folder"], tmp / run["folder"]
            dst.mkdir(parents=True, exist_ok=True)
            for name in REPORT_FILES:
                if (src / name).is_file():
                    shutil.copy2(src / name, dst / name)
        write_summary(tmp, summary)
    return summary
