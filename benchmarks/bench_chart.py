"""The benchmark's table as a chart: one SVG, written with no plotting library.

`chart_svg(results)` is a pure function of a ``results.json`` document (see
``run.py``): one bar per ratio target of each scenario (hand-written marking
against the plugin, the plugin against the floor), on a logarithmic axis so
that 0.4x and 10x both read well, each with its target drawn as a dark tick
and the bar green when the target was met, orange when not.  ``run.py``
writes it next to its results; ``docs/benchmarks.svg`` is the published copy:

    python benchmarks/bench_chart.py RESULTS.json OUTPUT.svg
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterator, Mapping, Sequence
from html import escape
from typing import Any

MET, MISSED, UNKNOWN, INK, GRID = "#06c755", "#f59e0b", "#94a3b8", "#1e293b", "#e2e8f0"
LOW, HIGH = 0.25, 16.0
"""The axis: ratios outside are drawn at its edge."""
TICKS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)

_WIDTH, _LABELS, _RIGHT, _ROW, _TOP = 860, 330, 90, 26, 80


def rows(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The ratio targets of every scenario, in the run's order: the chart's bars."""
    found = []
    for sid, scenario in results.get("scenarios", {}).items():
        for target in scenario.get("targets", []):
            name = str(target.get("name", ""))
            if " / " in name and target.get("op") in (">=", "<="):
                value = target.get("value")
                found.append(
                    {
                        "scenario": sid,
                        "name": name.removeprefix(f"{sid} "),
                        "value": value if isinstance(value, (int, float)) else None,
                        "op": target["op"],
                        "threshold": float(target["threshold"]),
                        "met": target.get("met"),
                    }
                )
    return found


def _x(value: float) -> float:
    clamped = min(max(value, LOW), HIGH)
    span = math.log(HIGH / LOW)
    return round(_LABELS + math.log(clamped / LOW) / span * (_WIDTH - _LABELS - _RIGHT), 1)


def _figure(value: float) -> str:
    """``8.61``, ``1.004``, ``10``: enough digits to tell a miss by 0.4% from a hit."""
    return f"{value:.3f}".rstrip("0").rstrip(".")


def _bar(y: float, row: Mapping[str, Any]) -> Iterator[str]:
    value, met = row["value"], row["met"]
    colour = UNKNOWN if met is None else MET if met else MISSED
    label = f"{row['scenario']}  {row['name']}"
    yield (
        f'<text x="{_LABELS - 10}" y="{y + 13}" text-anchor="end" class="name">'
        f"{escape(label)}</text>"
    )
    if value is not None:
        width = max(_x(value) - _LABELS, 1.5)
        yield (
            f'<rect x="{_LABELS}" y="{y + 3}" width="{width}" height="{_ROW - 8}" rx="3" '
            f'fill="{colour}"><title>{escape(label)}: {value:.3g}x</title></rect>'
        )
        after = max(_LABELS + width, _x(row["threshold"])) + 6
        yield f'<text x="{after}" y="{y + 14}" class="value">{_figure(value)}x</text>'
    else:
        yield f'<text x="{_LABELS + 6}" y="{y + 14}" class="value">no value</text>'
    tx = _x(row["threshold"])
    sign = "\u2265" if row["op"] == ">=" else "\u2264"
    yield (
        f'<line x1="{tx}" y1="{y}" x2="{tx}" y2="{y + _ROW - 2}" stroke="{INK}" '
        f'stroke-width="2.5"><title>target {sign} {row["threshold"]:g}x</title></line>'
    )
    yield (
        f'<text x="{_WIDTH - _RIGHT + 10}" y="{y + 14}" class="target">'
        f"{sign} {row['threshold']:g}x</text>"
    )


def chart_svg(results: Mapping[str, Any], title: str | None = None) -> str:
    """The SVG text of the chart for *results* (a ``results.json`` document)."""
    bars = rows(results)
    height = _TOP + _ROW * max(len(bars), 1) + 30
    mode = results.get("mode", "full")
    title = title or f"line_markread benchmarks ({mode} run): ratios against their targets"
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_WIDTH} {height}" '
        f'width="{_WIDTH}" height="{height}" role="img" aria-label="{escape(title)}">',
        "<style>text{font:12px system-ui,-apple-system,'Segoe UI',sans-serif;fill:#1e293b}"
        ".title{font-size:15px;font-weight:700}.sub{fill:#64748b}.tick{fill:#94a3b8;"
        "font-size:11px}.value{font-weight:600}.target{fill:#475569}</style>",
        f'<rect width="{_WIDTH}" height="{height}" fill="#ffffff"/>',
        f'<text x="16" y="24" class="title">{escape(title)}</text>',
        '<text x="16" y="42" class="sub">Bars: the ratio measured (log scale); dark tick: '
        "the target; green met, orange missed.</text>",
        '<text x="16" y="58" class="sub">naive / plugin: hand-written marking\'s time over the '
        "plugin's; plugin / floor: against the least work with the same effect.</text>",
    ]
    bottom = _TOP + _ROW * max(len(bars), 1)
    for tick in TICKS:
        x = _x(tick)
        parts.append(
            f'<line x1="{x}" y1="{_TOP - 6}" x2="{x}" y2="{bottom}" stroke="{GRID}"/>'
            f'<text x="{x}" y="{bottom + 16}" text-anchor="middle" class="tick">{tick:g}x</text>'
        )
    x1 = _x(1.0)
    parts.append(f'<line x1="{x1}" y1="{_TOP - 6}" x2="{x1}" y2="{bottom}" stroke="#94a3b8"/>')
    previous = None
    for i, row in enumerate(bars):
        y = _TOP + _ROW * i
        if previous is not None and row["scenario"] != previous:
            parts.append(
                f'<line x1="16" y1="{y}" x2="{_WIDTH - 16}" y2="{y}" stroke="{GRID}" '
                'stroke-dasharray="3 3"/>'
            )
        previous = row["scenario"]
        parts.extend(_bar(y, row))
    if not bars:
        empty = "no ratio targets in these results"
        parts.append(f'<text x="{_LABELS}" y="{_TOP + 14}">{empty}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        print("usage: bench_chart.py RESULTS.json OUTPUT.svg", file=sys.stderr)
        return 2
    with open(args[0], encoding="utf-8") as f:
        results = json.load(f)
    with open(args[1], "w", encoding="utf-8") as f:
        f.write(chart_svg(results))
    print(f"chart written to {args[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
