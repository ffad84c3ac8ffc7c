"""The automatic mixed-precision part of a report: what the budget was, what was chosen, what it cost.

Shared by report.md and report.html, from `report["auto"]` (the allocation's record plus the measured KL).
"""

from __future__ import annotations


def _num(v, spec: str = ".4g") -> str:
    return "—" if v is None else format(v, spec)


def auto_rows(a: dict) -> list[tuple[str, str]]:
    """(what, value) rows: target, budget and achieved bytes and bits/weight, bit widths used, predicted vs
    measured KL, time per phase."""
    t = a["target"]
    target = f"{t['bits_per_weight']:g} bits/weight" if t.get("bits_per_weight") is not None else f"size {t['size']}"
    count: dict[int, int] = {}
    for m in a["modules"].values():
        count[m["bits"]] = count.get(m["bits"], 0) + 1
    asym = sum(m.get("symmetric") is False for m in a["modules"].values())
    measured = "" if not a.get("cached") else " (measurement reused from an earlier run)"
    return [
        ("target", target),
        (
            "budget of the quantized Linears",
            f"{a['budget_bytes']:,} bytes = {a['budget_bits_per_weight']:.4f} bits/weight",
        ),
        ("achieved", f"{a['bytes']:,} bytes = {a['bits_per_weight']:.4f} bits/weight"),
        ("modules per bit width", ", ".join(f"{b} bits: {n}" for b, n in sorted(count.items()))),
        *([("asymmetric modules (a zero point per group)", str(asym))] if asym else []),
        ("predicted KL (sum of per-module estimates)", _num(a.get("predicted_kl"))),
        ("measured KL (evaluation text)", _num(a.get("measured_kl"))),
        ("estimator", f"{a['estimator']} error × coherent output Fisher of {a['sensitivity_tokens']} tokens{measured}"),
        ("seconds", ", ".join(f"{k} {v:.1f}" for k, v in a["seconds"].items())),
    ]


def auto_markdown(a: dict) -> list[str]:
    return ["## Automatic mixed precision", "", "| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in auto_rows(a)], ""]
