"""Run a matrix (or one shard of it) into DIR: one folder per run, the base evaluated once per model.

    DIR/runs/<model>__<recipe>/      compressed checkpoint + report.{json,md,html} + run.json
    DIR/.base/<model>.npy            base log-probs while that model's runs are going (deleted after)
    DIR/summary.{json,md,html}, DIR/junit.xml

Resume: a run whose run.json says `ok` under the same key (model, recipe content, eval settings,
tensorpress version) and whose report.json exists is skipped; anything else is (re)done. One failing
run is recorded with its error and the others go on.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import traceback
from itertools import groupby
from pathlib import Path

from tensorpress.batch.matrix import Matrix, RunSpec, select_shard
from tensorpress.batch.summary import build_summary, run_metrics, write_summary
from tensorpress.errors import TensorpressError
from tensorpress.infra.atomic import write_text_atomic
from tensorpress.infra.devices import check_device
from tensorpress.infra.outputs import OutputClaim, input_paths, read_marker, write_marker
from tensorpress.infra.progress import Progress
from tensorpress.version import __version__

RUN_FILE = "run.json"


def run_batch(
    matrix: Matrix,
    out: str | Path,
    shard: tuple[int, int] | None = None,
    device: str = "cpu",
    progress: Progress | None = None,
    force: bool = False,
) -> dict:
    """Run the matrix's runs (of `shard`, when given) into `out`; returns the summary (also written).

    Without `force` an earlier batch output in `out` is resumed in place (each run folder is replaced
    atomically on its own); with `force` the whole batch is built aside and swapped in when complete."""
    progress = progress or Progress()
    out = Path(out)
    check_device(device)
    with OutputClaim(out, "batch", force, batch_inputs(matrix), resume=not force) as claim:
        if force:
            with claim.build() as tmp:
                return _run_into(matrix, tmp, shard, device, progress)
        out.mkdir(exist_ok=True)
        if read_marker(out) is None:
            write_marker(out, "batch")
        return _run_into(matrix, out, shard, device, progress)


def batch_inputs(matrix: Matrix) -> list[Path]:
    """What a batch reads: the matrix file, its recipe files, local models and a text file."""
    folder = Path(matrix.source).parent
    recipes = [folder / r.spec if (folder / r.spec).is_file() else r.spec for r in matrix.recipes]
    return input_paths(matrix.source, *matrix.models, *recipes, *matrix.eval.texts)


def _run_into(matrix: Matrix, out: Path, shard: tuple[int, int] | None, device: str, progress: Progress) -> dict:
    (out / "runs").mkdir(parents=True, exist_ok=True)
    runs = select_shard(matrix.runs(), shard)
    where = f" (shard {shard[0]}/{shard[1]})" if shard else ""
    progress.log(f"batch: {len(runs)} run(s){where} of {len(matrix.models)} model(s) × {len(matrix.recipes)} recipe(s)")
    records: dict[int, dict] = {}
    tracked = iter(progress.track(range(len(runs)), "runs", total=len(runs)))
    try:
        _run_groups(matrix, runs, out, device, progress, tracked, records)
        for _ in tracked:  # let the progress display finish
            pass
    finally:
        tracked.close()
    shutil.rmtree(out / ".base", ignore_errors=True)
    shards = [f"{shard[0]}/{shard[1]}"] if shard else None
    summary = build_summary(matrix.to_dict(), [records[r.index] for r in runs], shards, expect_all=shard is None)
    write_summary(out, summary)
    return summary


def _run_groups(matrix: Matrix, runs: list[RunSpec], out: Path, device, progress, tracked, records) -> None:
    """Runs grouped by model (consecutive in matrix order): the base is evaluated once per group, if needed."""
    for model, group in groupby(runs, key=lambda r: r.model):
        group = list(group)
        todo = [r for r in group if finished(out, r) is None]
        base = None
        base_error = None
        try:
            for run in group:
                next(tracked, None)
                tag = f"run {run.index + 1}/{len(matrix.models) * len(matrix.recipes)} {run.id}"
                done = finished(out, run)
                if done is not None:
                    records[run.index] = done
                    progress.log(f"{tag}: skipped (finished earlier under the same key)")
                    continue
                if base is None and base_error is None and todo:
                    progress.log(f"base {run.model_label}: evaluating once for {len(todo)} run(s)")
                    try:
                        base = _base_reference(matrix, model, out, device, progress)
                    except Exception as e:
                        base_error = _message(e)
                        progress.log(f"base {run.model_label}: FAILED: {base_error}")
                progress.log(f"{tag}: start")
                records[run.index] = _run_one(matrix, run, out, base, base_error, device, progress)
                rec = records[run.index]
                if rec["status"] == "ok":
                    m = rec["metrics"]
                    progress.log(
                        f"{tag}: ok in {m['seconds']:.1f}s, ppl {m['ppl']:.4g}, KL {_g(m['kl'])}, "
                        f"{_g(m['bits_per_weight'])} bits/weight"
                    )
                else:
                    progress.log(f"{tag}: FAILED: {rec['error']}")
        finally:
            for reference in (base or {}).values():
                reference.close()


def finished(out: Path, run: RunSpec) -> dict | None:
    """The stored record of a run finished under the same key, else None."""
    folder = out / "runs" / run.id
    try:
        rec = json.loads((folder / RUN_FILE).read_text())
    except (OSError, ValueError):
        return None
    if rec.get("key") != run.key or rec.get("status") != "ok" or not (folder / "report.json").is_file():
        return None
    return rec


def _base_reference(matrix: Matrix, model: str, out: Path, device: str, progress: Progress) -> dict:
    """Per eval text, the base model's log-probs on its windows (written once, read back by every run)."""
    from tensorpress.calibration.windows import eval_windows, load_tokenizer
    from tensorpress.evaluation.metrics import BaseReference
    from tensorpress.model.checkpoint import resolve_folder

    folder = resolve_folder(model)
    tokenizer = load_tokenizer(folder)
    ev = matrix.eval
    key = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:16]
    refs = {}
    for i, text in enumerate(ev.texts):
        tokens = eval_windows(text, tokenizer, ev.windows, ev.seqlen)
        path = out / ".base" / f"{key}-{i}.npy"
        conts = tokenizer if i == 0 else None  # the continuations are the model's, not the text's: once
        refs[text] = BaseReference.compute(folder, tokens, path, device=device, progress=progress, tokenizer=conts)
    return refs


def _run_one(matrix, run: RunSpec, out: Path, base, base_error, device: str, progress: Progress) -> dict:
    folder = out / "runs" / run.id
    rec = {
        "index": run.index,
        "id": run.id,
        "model": run.model,
        "model_label": run.model_label,
        "recipe": run.recipe.spec,
        "recipe_label": run.recipe.label,
        "recipe_hash": run.recipe.content_hash,
        "key": run.key,
        "tensorpress_version": __version__,
        "folder": f"runs/{run.id}",
    }
    from tensorpress.pipeline.run import compress  # torch: imported only when a run starts

    t0 = time.perf_counter()
    try:
        if base_error is not None:
            raise TensorpressError(f"base evaluation failed: {base_error}")
        result = compress(
            run.model,
            run.recipe.recipe,
            folder,
            eval_text=matrix.eval.texts,
            windows=matrix.eval.windows,
            seqlen=matrix.eval.seqlen,
            device=device,
            force=True,
            progress=progress,
            eval_base=base,
        )
        rec.update(status="ok", error=None, metrics=run_metrics(result.report, time.perf_counter() - t0))
        rec["report_html"] = f"runs/{run.id}/report.html"
    except Exception as e:  # one failing run must not stop the others; KeyboardInterrupt still does
        rec.update(status="failed", error=_message(e), metrics=None)
        if not isinstance(e, TensorpressError):
            rec["traceback"] = traceback.format_exc()
    folder.mkdir(parents=True, exist_ok=True)
    if read_marker(folder) is None:  # a failed run's record: the rerun's --force may replace it
        write_marker(folder, "batch-run")
    write_text_atomic(folder / RUN_FILE, json.dumps(rec, indent=2) + "\n")
    return rec


def _message(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return text if isinstance(e, TensorpressError) else f"{type(e).__name__}: {text}"


def _g(v) -> str:
    return "—" if v is None else f"{v:.4g}"
