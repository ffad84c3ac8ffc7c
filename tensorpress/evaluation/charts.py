"""The report's pictures: matplotlib figures rendered to PNG and returned as `data:` URIs (self-contained HTML).

The data shaping (per-layer errors, Pareto fronts) is in plain functions so tests can check it
without looking at pixels.
"""

from __future__ import annotations

import base64
import io
import re
from collections import defaultdict

_LAYER = re.compile(r"(?:^|\.)(\d+)(?:\.|$)")


def layer_errors(report: dict) -> tuple[dict[int, float], str]:
    """Per decoder layer error and what it is.

    `layer_output_error` (calibrated recipes: |f̂(x) - f(x)| / |f(x) - x| on calibration batch 0) when present,
    else the mean of `relative_weight_error` (|Ŵ - W| / |W|) over the layer's modules."""
    out = report.get("layer_output_error") or {}
    if out:
        return {int(k): float(v) for k, v in out.items()}, "relative output error"
    per_layer: dict[int, list[float]] = defaultdict(list)
    for name, v in (report.get("relative_weight_error") or {}).items():
        m = _LAYER.search(name)
        if m:  # modules outside the decoder layers (lm_head) have no layer index
            per_layer[int(m.group(1))].append(float(v))
    return {i: sum(vs) / len(vs) for i, vs in sorted(per_layer.items())}, "mean relative weight error"


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both axes (smaller x and smaller y are better),
    ordered by x. A point equal to another on both axes is kept once (the first)."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1], i))
    front, best_y = [], float("inf")
    for i in order:
        if points[i][1] < best_y:
            front.append(i)
            best_y = points[i][1]
    return front


def _png_uri(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def layer_error_chart(errors: dict[int, float], what: str) -> str | None:
    if not errors:
        return None
    plt = _plt()
    layers = sorted(errors)
    fig, ax = plt.subplots(figsize=(8, 3))
    ax.bar([str(i) for i in layers], [errors[i] for i in layers], color="#4878a8")
    ax.set_xlabel("decoder layer")
    ax.set_ylabel(what)
    ax.set_title(f"{what} per layer")
    if len(layers) > 20:
        ax.tick_params(axis="x", labelsize=7)
    return _png_uri(fig)


def component_chart(components: dict[str, int], base_bytes: int | None = None) -> str | None:
    items = [(k, v) for k, v in components.items() if v > 0]
    if not items:
        return None
    plt = _plt()
    mib = 2**20
    fig, ax = plt.subplots(figsize=(8, 0.5 + 0.45 * len(items)))
    names = [k for k, _ in items][::-1]
    values = [v / mib for _, v in items][::-1]
    ax.barh(names, values, color="#6a9f58")
    for y, v in enumerate(values):
        ax.text(v, y, f" {v:.2f} MiB", va="center", fontsize=8)
    if base_bytes:
        ax.axvline(
            base_bytes / mib, color="#a84848", linestyle="--", label=f"base checkpoint {base_bytes / mib:.1f} MiB"
        )
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xlabel("MiB")
    ax.set_title("bytes by component")
    return _png_uri(fig)


def text_kl_chart(points: list[tuple[str, str, float | None]]) -> str | None:
    """KL per evaluation text, one bar per series (a run) within each text's group; points are
    (series, text, KL). Where a person compares texts at a glance rather than reading a table."""
    points = [(s, t, k) for s, t, k in points if k is not None]
    if not points:
        return None
    plt = _plt()
    texts = list(dict.fromkeys(t for _, t, _ in points))
    series = list(dict.fromkeys(s for s, _, _ in points))
    value = {(s, t): k for s, t, k in points}
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(8, 0.8 + 0.35 * len(texts) * max(1, len(series) / 2)))
    for j, name in enumerate(series):
        ys = [i + j * width for i, t in enumerate(texts) if (name, t) in value]
        ax.barh(ys, [value[name, t] for t in texts if (name, t) in value], height=width, label=name)
    ax.set_yticks([i + 0.4 - width / 2 for i in range(len(texts))], texts, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("KL(base ‖ compressed) per token")
    ax.set_title("KL per evaluation text")
    if len(series) > 1:
        ax.legend(fontsize=7, loc="lower right")
    return _png_uri(fig)


def quality_size_chart(rows: list[dict]) -> str | None:
    """bits/weight against ppl and against KL, one point per run, a Pareto front per model.

    rows: [{model, recipe, bits_per_weight, ppl, kl}] of finished runs."""
    rows = [r for r in rows if r.get("bits_per_weight") is not None and r.get("ppl") is not None]
    if not rows:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    models = list(dict.fromkeys(r["model"] for r in rows))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, metric, label in ((axes[0], "ppl", "perplexity"), (axes[1], "kl", "KL(base ‖ compressed)")):
        for m_i, model in enumerate(models):
            pts = [r for r in rows if r["model"] == model and r.get(metric) is not None]
            if not pts:
                continue
            color = colors[m_i % len(colors)]
            base = pts[0].get("ppl_base") if metric == "ppl" else None
            if base is not None:
                ax.axhline(base, color=color, linestyle=":", alpha=0.8, label=f"base ({model})")
            xy = [(r["bits_per_weight"], r[metric]) for r in pts]
            ax.scatter([x for x, _ in xy], [y for _, y in xy], color=color, label=model, zorder=3)
            for r, (x, y) in zip(pts, xy, strict=True):
                ax.annotate(r["recipe"], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
            front = pareto_front(xy)
            ax.step(
                [xy[i][0] for i in front],
                [xy[i][1] for i in front],
                where="post",
                color=color,
                linestyle="--",
                alpha=0.7,
                label=f"Pareto front ({model})",
            )
            ax.scatter(
                [xy[i][0] for i in front],
                [xy[i][1] for i in front],
                facecolors="none",
                edgecolors="black",
                s=120,
                zorder=4,
            )
        ax.set_xlabel("bits per weight")
        ax.set_ylabel(label)
        ax.set_title(f"{label} vs size")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    return _png_uri(fig)


def bits_grid(modules: dict[str, dict]) -> tuple[list[int], list[str], list[list[float | None]]]:
    """Chosen bits as a layers × module-kind grid: (layers, kinds, grid[layer][kind]) from
    `report["auto"]["modules"]` (full name → {"bits": …}); kinds in first-seen order (q, k, v, o, gate, up, down)."""
    cells: dict[tuple[int, str], float] = {}
    kinds: list[str] = []
    for name, m in modules.items():
        found = _LAYER.search(name)
        if not found:
            continue
        kind = name[found.end() :] or name
        if kind not in kinds:
            kinds.append(kind)
        cells[(int(found.group(1)), kind)] = float(m["bits"])
    layers = sorted({i for i, _ in cells})
    return layers, kinds, [[cells.get((i, k)) for k in kinds] for i in layers]


def bits_heatmap(modules: dict[str, dict]) -> str | None:
    """Heat map of the bits automatic mixed precision chose per module (rows: layers, columns: kinds)."""
    layers, kinds, grid = bits_grid(modules)
    if not layers:
        return None
    import numpy as np

    plt = _plt()
    data = np.array([[np.nan if v is None else v for v in row] for row in grid])
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(kinds), 1.2 + 0.28 * len(layers)))
    im = ax.imshow(data, aspect="auto", cmap="viridis", vmin=np.nanmin(data), vmax=np.nanmax(data))
    for r in range(len(layers)):
        for c in range(len(kinds)):
            if not np.isnan(data[r, c]):
                color = "white" if data[r, c] < (np.nanmin(data) + np.nanmax(data)) / 2 else "black"  # viridis
                ax.text(c, r, f"{data[r, c]:g}", ha="center", va="center", fontsize=7, color=color)
    ax.set_xticks(range(len(kinds)), [k.rpartition(".")[2] for k in kinds], rotation=30, fontsize=8)
    ax.set_yticks(range(len(layers)), [str(i) for i in layers], fontsize=7)
    ax.set_ylabel("decoder layer")
    ax.set_title("bits per module (automatic mixed precision)")
    fig.colorbar(im, ax=ax, label="bits")
    return _png_uri(fig)
