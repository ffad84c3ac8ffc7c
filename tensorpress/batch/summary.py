"""The batch summary: summary.json (machines), summary.md and summary.html (people), junit.xml (CI reporters).

A summary is built from run records alone (run.json of each run), so a merge of shard outputs
builds exactly the summary an unsharded batch would have.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from html import escape
from pathlib import Path

from tensorpress.batch.matrix import GATE_METRICS, Gate
from tensorpress.infra.atomic import write_text_atomic
from tensorpress.version import __version__

TABLE_HEADER = ["model", "recipe", "ppl", "Δppl %", "KL", "top-1", "bits/weight", "bytes", "seconds", "gates"]
SECONDS_COLUMN = TABLE_HEADER.index("seconds")
# The report metrics a summary row keeps: every gateable metric but the run time (kept separately).
METRIC_KEYS = tuple(m for m in GATE_METRICS if m != "seconds")
# Metrics measured on an eval text (one value per text); the others are the checkpoint's own.
TEXT_METRICS = ("ppl", "ppl_base", "ppl_increase_pct", "kl", "top1_agreement")
TEXT_HEADER = ["model", "recipe", "text", "base ppl", "ppl", "Δppl %", "KL", "top-1"]


def run_metrics(report: dict, seconds: float) -> dict:
    """What a summary keeps of a run's report.json (and what gates test): the first eval text's metrics
    at the top, every text's under "texts"."""
    m = {k: report.get(k) for k in METRIC_KEYS}
    m["seconds"] = round(seconds, 3)
    m["texts"] = [{k: t.get(k) for k in ("text", *TEXT_METRICS)} for t in report.get("texts") or []]
    return m


def evaluate_gates(gates: list[dict], run: dict) -> list[dict]:
    """[{name, metric, passed, value, message}] of every gate on one finished run; a quality gate is
    checked on every eval text (named in the gate when there are several)."""
    out = []
    metrics = run.get("metrics") or {}
    texts = metrics.get("texts") or []
    for raw in gates:
        gate = Gate(raw["metric"], raw.get("max"), raw.get("min"))
        if gate.metric in TEXT_METRICS and len(texts) > 1:
            checks = [(f"{gate.name} on {t['text']}", t.get(gate.metric)) for t in texts]
        else:
            checks = [(gate.name, metrics.get(gate.metric))]
        for name, value in checks:
            passed, message = gate.check(value)
            out.append({"name": name, "metric": gate.metric, "value": value, "passed": passed, "message": message})
    return out


def build_summary(matrix: dict, records: list[dict], shards: list[str] | None = None, expect_all: bool = True) -> dict:
    """The summary of run records (in matrix order); gates are (re)evaluated here from each run's metrics.

    `expect_all`: every run of the matrix should be there (an unsharded batch, a merge); missing ones fail."""
    runs = []
    for rec in sorted(records, key=lambda r: r["index"]):
        run = {k: v for k, v in rec.items() if k != "traceback"}
        run["gates"] = evaluate_gates(matrix.get("gates", []), run) if run["status"] == "ok" else []
        runs.append(run)
    runs_failed = sum(r["status"] != "ok" for r in runs)
    gates_failed = sum(not g["passed"] for r in runs for g in r["gates"])
    total = len(matrix["models"]) * len(matrix["recipes"])
    present = {r["index"] for r in runs}
    missing = [i for i in range(total) if i not in present] if expect_all else []
    return {
        "tensorpress_version": __version__,
        "matrix": matrix,
        "shards": shards,
        "runs_in_matrix": total,
        "missing_runs": missing,
        "runs_failed": runs_failed,
        "gates_failed": gates_failed,
        "ok": runs_failed == 0 and gates_failed == 0 and not missing,
        "runs": runs,
    }


def run_status(run: dict) -> str:
    if run["status"] != "ok":
        return "error"
    return "fail" if any(not g["passed"] for g in run["gates"]) else "pass"


def table_rows(summary: dict) -> list[list[str]]:
    """The summary table (TABLE_HEADER columns), one row per run in matrix order."""
    rows = []
    for run in summary["runs"]:
        m = run.get("metrics") or {}
        pct = m.get("ppl_increase_pct")
        top1 = m.get("top1_agreement")
        rows.append(
            [
                run["model_label"],
                run["recipe_label"],
                _f(m.get("ppl"), ".4f"),
                "—" if pct is None else f"{pct:+.2f}",
                _f(m.get("kl"), ".4f"),
                "—" if top1 is None else f"{top1:.2%}",
                _f(m.get("bits_per_weight"), ".3f"),
                "—" if m.get("size_bytes") is None else f"{m['size_bytes']:,}",
                _f(m.get("seconds"), ".1f"),
                run_status(run),
            ]
        )
    return rows


def _several_texts(run: dict) -> list[dict]:
    """A run's per-text metrics when it was evaluated on several texts (else none: the main table has it)."""
    texts = (run.get("metrics") or {}).get("texts") or []
    return texts if len(texts) > 1 else []


def text_rows(summary: dict) -> list[list[str]]:
    """The per-text table (TEXT_HEADER columns): one row per run and eval text, when there are several texts."""
    rows = []
    for run in summary["runs"]:
        for t in _several_texts(run):
            pct, top1 = t.get("ppl_increase_pct"), t.get("top1_agreement")
            rows.append(
                [
                    run["model_label"],
                    run["recipe_label"],
                    t["text"],
                    _f(t.get("ppl_base"), ".4f"),
                    _f(t.get("ppl"), ".4f"),
                    "—" if pct is None else f"{pct:+.2f}",
                    _f(t.get("kl"), ".4f"),
                    "—" if top1 is None else f"{top1:.2%}",
                ]
            )
    return rows


def text_points(summary: dict) -> list[tuple[str, str, float | None]]:
    """(run, text, KL) of every run evaluated on several texts: the per-text chart's bars."""
    return [
        (f"{run['model_label']} × {run['recipe_label']}", t["text"], t.get("kl"))
        for run in summary["runs"]
        for t in _several_texts(run)
    ]


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows],
    ]


def render_markdown(summary: dict) -> str:
    lines = ["# tensorpress batch summary", ""]
    ev = summary["matrix"]["eval"]
    texts = ", ".join(f"`{t}`" for t in ([ev["text"]] if isinstance(ev["text"], str) else ev["text"]))
    lines.append(
        f"{len(summary['runs'])} of {summary['runs_in_matrix']} run(s); eval {ev['windows']}×{ev['seqlen']} tokens"
        f" of {texts}" + (f"; shards {', '.join(summary['shards'])}" if summary.get("shards") else "")
    )
    lines += ["", *_md_table(TABLE_HEADER, table_rows(summary))]
    per_text = text_rows(summary)
    if per_text:
        lines += ["", "## Per evaluation text", "", *_md_table(TEXT_HEADER, per_text)]
    failing = [(r, g) for r in summary["runs"] for g in r["gates"] if not g["passed"]]
    errors = [r for r in summary["runs"] if r["status"] != "ok"]
    if summary["matrix"].get("gates"):
        lines += ["", "Gates: " + "; ".join(Gate(**g).name for g in summary["matrix"]["gates"])]
    if failing:
        lines += ["", "## Failing gates", ""]
        lines += [f"- {r['model_label']} × {r['recipe_label']}: {g['message']}" for r, g in failing]
    if errors:
        lines += ["", "## Failed runs", ""]
        lines += [f"- {r['model_label']} × {r['recipe_label']}: {r['error']}" for r in errors]
    if summary.get("missing_runs"):
        lines += ["", f"Missing runs (matrix indices): {summary['missing_runs']}"]
    lines += ["", f"Verdict: {'PASS' if summary['ok'] else 'FAIL'}", ""]
    return "\n".join(lines)


def render_junit(summary: dict) -> str:
    """One <testsuite> per model; a test case per run (<error> when it failed) and per gate (<failure>)."""
    root = ET.Element("testsuites", name="tensorpress batch")
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    models = list(dict.fromkeys(r["model_label"] for r in summary["runs"]))
    for model in models:
        suite = ET.SubElement(root, "testsuite", name=model)
        counts = dict.fromkeys(totals, 0)
        for run in (r for r in summary["runs"] if r["model_label"] == model):
            seconds = (run.get("metrics") or {}).get("seconds") or 0.0
            case = ET.SubElement(
                suite, "testcase", classname=f"batch.{model}", name=run["recipe_label"], time=f"{seconds:.3f}"
            )
            counts["tests"] += 1
            if run["status"] != "ok":
                counts["errors"] += 1
                err = ET.SubElement(case, "error", message=run.get("error") or "failed", type="RunFailed")
                err.text = run.get("error") or ""
            for gate in run["gates"]:
                gcase = ET.SubElement(
                    suite, "testcase", classname=f"batch.{model}", name=f"{run['recipe_label']} gate: {gate['name']}"
                )
                counts["tests"] += 1
                if not gate["passed"]:
                    counts["failures"] += 1
                    ET.SubElement(gcase, "failure", message=gate["message"], type="GateFailed").text = gate["message"]
            if run["status"] != "ok":
                for g in summary["matrix"].get("gates", []):
                    gcase = ET.SubElement(
                        suite,
                        "testcase",
                        classname=f"batch.{model}",
                        name=f"{run['recipe_label']} gate: {Gate(**g).name}",
                    )
                    counts["tests"] += 1
                    counts["skipped"] += 1
                    ET.SubElement(gcase, "skipped", message="the run failed")
        for k, v in counts.items():
            suite.set(k, str(v))
            totals[k] += v
    for k, v in totals.items():
        root.set(k, str(v))
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_summary(out: Path, summary: dict) -> None:
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    write_text_atomic(out / "summary.md", render_markdown(summary))
    write_text_atomic(out / "junit.xml", render_junit(summary))
    write_text_atomic(out / "summary.html", render_summary_html(summary))


def render_summary_html(summary: dict) -> str:
    """summary.html: the runs table (linked to each report.html), quality vs size with each model's Pareto front,
    the gates and the failed runs, built from the report page's pieces."""
    from tensorpress.evaluation import charts  # matplotlib: imported only when writing
    from tensorpress.evaluation.html_report import img, num, page, section, table

    rows = []
    for run, cells in zip(summary["runs"], table_rows(summary), strict=True):
        html_cells = [escape(c) for c in cells]
        link = run.get("report_html")
        if link:
            html_cells[1] = f'<a href="{escape(link)}">{html_cells[1]}</a>'
        status = cells[-1]
        html_cells[-1] = f'<td class="{"pass" if status == "pass" else "fail"}">{escape(status)}</td>'
        rows.append(html_cells)
    runs = table(TABLE_HEADER, rows, numeric=set(range(2, len(TABLE_HEADER) - 1)), cls="summary")
    ok = summary.get("ok")
    verdict = (
        "all runs finished and every gate passed"
        if ok
        else f"{summary.get('runs_failed', 0)} run(s) failed, {summary.get('gates_failed', 0)} gate(s) failed"
        + (f", {len(summary['missing_runs'])} run(s) missing" if summary.get("missing_runs") else "")
    )
    body = section("summary", "Summary", [f"<p><strong>{escape(verdict)}</strong></p>", runs])
    per_text = text_rows(summary)
    if per_text:
        cells = [[escape(c) for c in row] for row in per_text]
        body += section(
            "texts",
            "Per evaluation text",
            [
                img(charts.text_kl_chart(text_points(summary)), "KL per evaluation text"),
                table(TEXT_HEADER, cells, numeric=set(range(3, len(TEXT_HEADER))), cls="summary"),
            ],
        )
    points = [
        {**(run.get("metrics") or {}), "model": run["model_label"], "recipe": run["recipe_label"]}
        for run in summary["runs"]
        if run["status"] == "ok"
    ]
    body += section(
        "quality-size",
        "Quality vs size",
        [
            img(charts.quality_size_chart(points), "quality vs size"),
            "<p>One point per run; circled points form the Pareto front (no other recipe is both smaller and"
            " better) of each model.</p>",
        ],
    )
    gate_rows = []
    for run in summary["runs"]:
        for g in run.get("gates", []):
            status = "pass" if g["passed"] else "fail"
            gate_rows.append(
                [
                    escape(f"{run['model_label']} × {run['recipe_label']}"),
                    escape(g["name"]),
                    escape(num(g.get("value"))),
                    f'<td class="{status}">{status}</td>',
                ]
            )
    body += section(
        "gates",
        "Gates",
        [table(["run", "gate", "value", "status"], gate_rows, numeric={2}, cls="gates")]
        if gate_rows
        else ["<p><em>No gates.</em></p>"],
    )
    errors = [r for r in summary["runs"] if r["status"] == "failed"]
    if errors:
        body += section(
            "errors",
            "Failed runs",
            ["<ul>", *[f"<li>{escape(r['id'])}: {escape(r.get('error') or '')}</li>" for r in errors], "</ul>"],
        )
    return page("tensorpress batch summary", body)


def _f(v, spec: str) -> str:
    return "—" if v is None else format(v, spec)
