"""report.html and summary.html: one self-contained page each (plots are embedded PNG data URIs).

Everything shown comes from report.json / summary.json, so a page can be re-rendered from them.
Every string from outside (model names, recipes, generated text) is escaped.
"""

from __future__ import annotations

import json
from html import escape

from tensorpress.evaluation import charts
from tensorpress.evaluation.auto_report import auto_rows

CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1100px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.pass { color: #1d6b2f; font-weight: bold; } td.fail { color: #a11; font-weight: bold; }
td.text { white-space: pre-wrap; font-family: ui-monospace, monospace; font-size: 0.85em; max-width: 420px; }
img { max-width: 100%; } pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
"""


def page(title: str, body: list[str]) -> str:
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{escape(title)}</title>",
            f"<style>{CSS}</style></head><body>",
            f"<h1>{escape(title)}</h1>",
            *body,
            "</body></html>",
            "",
        ]
    )


def num(v, spec: str = ".4g") -> str:
    return "—" if v is None else format(v, spec)


def table(header: list[str], rows: list[list[str]], numeric: set[int] = frozenset(), cls: str = "") -> str:
    """rows hold already-escaped HTML cells."""
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = []
        for i, c in enumerate(row):
            attr = ' class="num"' if i in numeric else ""
            if c.startswith("<td"):
                cells.append(c)
            else:
                cells.append(f"<td{attr}>{c}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def img(uri: str | None, alt: str) -> str:
    if uri is None:
        return f"<p><em>No data for {escape(alt)}.</em></p>"
    return f'<img src="{uri}" alt="{escape(alt)}">'


def section(sid: str, title: str, content: list[str]) -> list[str]:
    return [f'<section id="{sid}">', f"<h2>{escape(title)}</h2>", *content, "</section>"]


def render_report_html(r: dict) -> str:
    mib = 2**20
    recipe_name = (r.get("recipe") or {}).get("name") or "recipe"
    pct = r.get("ppl_increase_pct")
    top1 = r.get("top1_agreement")
    metrics = table(
        ["metric", "base", "compressed"],
        [
            ["perplexity", num(r.get("ppl_base")), num(r.get("ppl"))],
            ["size (MiB)", f"{r['size_bytes_base'] / mib:.1f}", f"{r['size_bytes'] / mib:.1f}"],
            ["perplexity change", "", "—" if pct is None else f"{pct:+.2f} %"],
            ["KL(base ‖ compressed) per token", "", num(r.get("kl"))],
            ["top-1 agreement with base", "", "—" if top1 is None else f"{top1:.2%}"],
            ["bits per quantized weight", "", num(r.get("bits_per_weight"))],
            ["bits per parameter, whole checkpoint", "", num(r.get("bits_per_param_overall"))],
        ],
        numeric={1, 2},
        cls="metrics",
    )
    ev = r.get("eval") or {}
    body = section(
        "summary",
        "Summary",
        [
            metrics,
            f"<p>{r.get('tokens')} scored tokens ({escape(str(ev.get('windows')))} windows × "
            f"{escape(str(ev.get('seqlen')))} of <code>{escape(str(ev.get('text')))}</code>); "
            f"tensorpress {escape(str(r.get('tensorpress_version')))}.</p>",
        ],
    )
    texts = r.get("texts") or []
    if len(texts) > 1:
        rows = [
            [
                f"<code>{escape(str(t['text']))}</code>",
                num(t.get("ppl_base")),
                num(t.get("ppl")),
                "—" if t.get("ppl_increase_pct") is None else f"{t['ppl_increase_pct']:+.2f} %",
                num(t.get("kl")),
                "—" if t.get("top1_agreement") is None else f"{t['top1_agreement']:.2%}",
            ]
            for t in texts
        ]
        chart = charts.text_kl_chart([(recipe_name, str(t["text"]), t.get("kl")) for t in texts])
        body += section(
            "texts",
            "Per evaluation text",
            [
                img(chart, "KL per evaluation text"),
                table(["text", "base ppl", "ppl", "Δppl", "KL", "top-1"], rows, numeric={1, 2, 3, 4, 5}),
            ],
        )
    errors, what = charts.layer_errors(r)
    body += section(
        "layer-error",
        "Error per layer",
        [img(charts.layer_error_chart(errors, what), what)],
    )
    if r.get("auto"):
        rows = [[escape(k), escape(v)] for k, v in auto_rows(r["auto"])]
        body += section(
            "auto",
            "Automatic mixed precision",
            [table(["", ""], rows, cls="auto"), img(charts.bits_heatmap(r["auto"]["modules"]), "bits per module")],
        )
    comps = r.get("bytes_by_component") or {}
    comp_rows = [[escape(k), f"{v:,}", f"{v / mib:.2f}"] for k, v in comps.items()]
    body += section(
        "bytes",
        "Bytes by component",
        [
            img(charts.component_chart(comps, r.get("size_bytes_base")), "bytes by component"),
            table(["component", "bytes", "MiB"], comp_rows, numeric={1, 2}, cls="components"),
        ],
    )
    conts = r.get("continuations") or []
    cont_rows = [
        [
            f'<td class="text">{escape(c["prompt"])}</td>',
            f'<td class="text">{escape(c["base"] if c.get("base") is not None else "—")}</td>',
            f'<td class="text">{escape(c["compressed"])}</td>',
        ]
        for c in conts
    ]
    body += section(
        "continuations",
        "Greedy continuations",
        [table(["prompt", "base", "compressed"], cont_rows, cls="continuations")]
        if conts
        else ["<p><em>Not computed.</em></p>"],
    )
    if r.get("seconds"):
        stage_rows = [[escape(k), f"{v:.1f}"] for k, v in r["seconds"].items()]
        body += section("time", "Time", [table(["stage", "seconds"], stage_rows, numeric={1})])
    if r.get("notes"):
        body += section("notes", "Notes", ["<ul>", *[f"<li>{escape(n)}</li>" for n in r["notes"]], "</ul>"])
    body += section("recipe", "Recipe", [f"<pre>{escape(json.dumps(r.get('recipe'), indent=2))}</pre>"])
    return page(f"tensorpress report — {recipe_name} on {r['model']}", body)
