"""report.json (for machines and CI gates) and report.md (for people), written atomically."""

from __future__ import annotations

import json
from pathlib import Path

from tensorpress.evaluation.auto_report import auto_markdown
from tensorpress.formats.sizes import bytes_by_component, size_stats
from tensorpress.infra.atomic import write_text_atomic
from tensorpress.infra.resources import StageMeter
from tensorpress.model.checkpoint import Checkpoint
from tensorpress.version import __version__


def build_report(
    out: Path, ckpt: Checkpoint, recipe: dict, metrics: dict, meter: StageMeter, notes: list[str], layer_stats: dict
) -> dict:
    texts = [_text_row(t) for t in metrics.get("texts") or [metrics]]  # the first is the headline
    sizes = size_stats(out)
    base_sizes = size_stats(ckpt.folder)
    report = {
        "tensorpress_version": __version__,
        "model": ckpt.spec,
        "ppl_base": metrics.get("ppl_base"),
        "ppl": metrics["ppl"],
        "ppl_increase_pct": texts[0]["ppl_increase_pct"],
        "kl": metrics.get("kl"),
        "top1_agreement": metrics.get("top1_agreement"),
        "tokens": metrics["tokens"],
        "eval": {k: metrics[k] for k in ("text", "windows", "seqlen") if k in metrics},
        # Every eval text (the first is the headline above): base ppl, ppl, its rise, KL, top-1.
        "texts": texts,
        "bits_per_weight": sizes["bits_per_weight"],
        "bits_per_param_overall": sizes["bits_per_param_overall"],
        "size_bytes": sizes["size_bytes"],
        "size_bytes_base": base_sizes["size_bytes"],
        "quantized_modules": sizes["quantized_modules"],
        "bytes_by_component": bytes_by_component(out),
        "seconds": {k: round(v, 3) for k, v in meter.seconds.items()},
        "peak_rss_bytes": meter.overall_peak,
        "peak_rss_bytes_by_stage": dict(meter.peak_rss),
        "recipe": recipe,
        "notes": notes,
        "relative_weight_error": {k: round(v, 6) for k, v in layer_stats.get("relative_error", {}).items()},
        # Per decoder layer (calibrated recipes only): |f̂(x) - f(x)| / |f(x) - x| on calibration batch 0.
        "layer_output_error": {str(k): round(v, 6) for k, v in layer_stats.get("output_error", {}).items()},
        "continuations": metrics.get("continuations"),
    }
    if layer_stats.get("auto"):  # automatic mixed precision: what it chose, predicted against measured
        report["auto"] = {**layer_stats["auto"], "measured_kl": metrics.get("kl")}
    return report


def _text_row(m: dict) -> dict:
    pct = 100 * (m["ppl"] / m["ppl_base"] - 1) if m.get("ppl_base") else None
    keys = ("text", "ppl_base", "ppl", "kl", "top1_agreement", "tokens")
    return {**{k: m.get(k) for k in keys}, "ppl_increase_pct": pct}


def write_report(folder: Path, report: dict) -> None:
    write_text_atomic(folder / "report.json", json.dumps(report, indent=2) + "\n")
    write_text_atomic(folder / "report.md", render_markdown(report))
    from tensorpress.evaluation.html_report import render_report_html  # matplotlib: imported only when writing

    write_text_atomic(folder / "report.html", render_report_html(report))


def text_markdown(texts: list[dict]) -> list[str]:
    """One row per eval text, base perplexity beside the compressed one (only when there are several)."""
    if len(texts) < 2:
        return []
    lines = ["| text | base ppl | ppl | Δppl % | KL | top-1 |", "|---|---|---|---|---|---|"]
    for t in texts:
        top1 = t.get("top1_agreement")
        lines.append(
            f"| `{t['text']}` | {_fmt(t.get('ppl_base'))} | {_fmt(t.get('ppl'))} | "
            f"{_fmt(t.get('ppl_increase_pct'), '+.2f')} | {_fmt(t.get('kl'))} | "
            f"{'—' if top1 is None else format(top1, '.2%')} |"
        )
    return [*lines, ""]


def _fmt(v, spec: str = ".4g") -> str:
    return "—" if v is None else format(v, spec)


def render_markdown(r: dict) -> str:
    mb = 1024 * 1024
    lines = [
        f"# tensorpress report — {r.get('recipe', {}).get('name') or 'recipe'} on {r['model']}",
        "",
        "| metric | base | compressed |",
        "|---|---|---|",
        f"| perplexity | {_fmt(r['ppl_base'])} | {_fmt(r['ppl'])} |",
        f"| size | {r['size_bytes_base'] / mb:.1f} MiB | {r['size_bytes'] / mb:.1f} MiB |",
        "",
        f"- perplexity change: {_fmt(r['ppl_increase_pct'], '+.2f')} %",
        f"- KL(base ‖ compressed), mean per token: {_fmt(r['kl'])}",
        f"- top-1 agreement with base: {_fmt(r['top1_agreement'], '.2%') if r['top1_agreement'] is not None else '—'}",
        f"- bits per compressed weight (codes, scales, zeros, masks, factors): {_fmt(r['bits_per_weight'])}",
        f"- bits per parameter, whole checkpoint: {_fmt(r['bits_per_param_overall'])}",
        f"- scored tokens: {r['tokens']} ({r['eval'].get('windows')} windows × {r['eval'].get('seqlen')}"
        f" on `{r['eval'].get('text')}`)",
        f"- peak RSS: {r['peak_rss_bytes'] / mb:.0f} MiB",
        "",
        *text_markdown(r.get("texts") or []),
        "| stage | seconds |",
        "|---|---|",
        *[f"| {k} | {v:.1f} |" for k, v in r["seconds"].items()],
        "",
    ]
    if r.get("auto"):
        lines += auto_markdown(r["auto"])
    if r.get("continuations"):
        lines += ["## Greedy continuations (base → compressed)", ""]
        for c in r["continuations"]:
            lines += [f"- **{c['prompt']}**", f"  - base: {c['base']!r}", f"  - compressed: {c['compressed']!r}"]
        lines.append("")
    if r.get("notes"):
        lines += ["## Notes", "", *[f"- {n}" for n in r["notes"]], ""]
    lines += ["## Recipe", "", "```json", json.dumps(r["recipe"], indent=2), "```", ""]
    return "\n".join(lines)
