"""Summaries, targets, the machine description and the printed table of a benchmark run."""

from __future__ import annotations

import math
import os
import platform
import statistics
import sys
from collections.abc import Sequence
from importlib import metadata
from typing import Any

SCHEMA_VERSION = 1
LIBRARIES = ("line-markread", "line-bot-sdk", "aiohttp", "attrs", "pydantic", "urllib3")


def summary(samples: Sequence[float]) -> dict[str, Any]:
    """Median and range of one measurement's repetitions."""
    values = [float(v) for v in samples]
    if not values:
        return {"samples": [], "median": None, "min": None, "max": None}
    return {
        "samples": values,
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
    }


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (p99 of 100 values is the 99th smallest)."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def target(name: str, value: float | None, op: str, threshold: float) -> dict[str, Any]:
    """One target of the issue, checked against this run (``met`` is None without a value)."""
    met: bool | None = None
    if value is not None and not math.isnan(value):
        met = {">=": value >= threshold, "<=": value <= threshold, "==": value == threshold}[op]
    return {"name": name, "value": value, "op": op, "threshold": threshold, "met": met}


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def machine() -> dict[str, Any]:
    versions: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    try:
        load: list[float] | None = list(os.getloadavg())
    except OSError:
        load = None
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "libraries": versions,
        "load_average_at_start": load,
    }


# -- the table -----------------------------------------------------------


_FORMATS = {
    "s": lambda v: f"{v * 1000:.1f} ms",
    "ms": lambda v: f"{v:.1f} ms",
    "us": lambda v: f"{v:,.0f} us",
    "events/s": lambda v: f"{v:,.0f}/s",
    "MB": lambda v: f"{v:.1f} MB",
}


def _fmt(value: float | None, unit: str) -> str:
    if value is None or math.isnan(value):
        return "-"
    form = _FORMATS.get(unit)
    return form(value) if form is not None else f"{value:.3g}"


def _range(entry: dict[str, Any], unit: str) -> str:
    if entry.get("min") is None:
        return "-"
    return f"{_fmt(entry['min'], unit)} - {_fmt(entry['max'], unit)}"


def table_lines(results: dict[str, Any], markdown: bool = False) -> list[str]:
    """The run as text: per scenario, a row per variant, then its ratios and targets."""
    lines: list[str] = []
    m = results["machine"]
    libs = ", ".join(f"{k} {v}" for k, v in m["libraries"].items() if v)
    lines.append(
        f"Machine: {m['cpu_count']} CPU ({m['cpu_model']}), {m['implementation']} "
        f"{m['python']}, {m['platform']}; {libs}"
    )
    if markdown:
        lines.append("")
    lines.append(
        f"Run: {results['mode']}, {results['config']['repetitions']} repetitions, "
        f"{results['duration_s']:.0f} s, load average at start {m['load_average_at_start']}"
    )
    for scenario in results["scenarios"].values():
        lines += _scenario_lines(scenario, markdown)
    return lines


def _scenario_lines(scenario: dict[str, Any], markdown: bool) -> list[str]:
    bullet = "- " if markdown else "  "
    lines = [""]
    heading = f"{scenario['id']}: {scenario['title']}"
    lines.append(f"### {heading}" if markdown else heading)
    if markdown:
        lines.append("")
    metrics: list[tuple[str, str, str]] = scenario["columns"]
    extra: list[str] = scenario.get("extra_columns", [])
    header = ["variant"]
    for _, label, _ in metrics:
        header += [f"{label} (median)", f"{label} (min - max)"]
    header += extra
    rows = [header]
    rows += [_row(name, variant, metrics, extra) for name, variant in scenario["variants"].items()]
    lines += _render(rows, markdown)
    if markdown:
        lines.append("")
    for name, value in scenario["ratios"].items():
        lines.append(f"{bullet}ratio {name}: {_plain(value)}")
    for t in scenario["targets"]:
        verdict = {True: "MET", False: "MISSED", None: "n/a"}[t["met"]]
        if markdown:
            verdict = f"**{verdict}**"
        lines.append(
            f"{bullet}target {t['name']} {t['op']} {_plain(t['threshold'])}: "
            f"{_plain(t['value'])} -> {verdict}"
        )
    if scenario.get("load_average_after") is not None:
        lines.append(f"{bullet}load average after: {scenario['load_average_after']}")
    for note in scenario.get("notes", []):
        lines.append(f"{bullet}note: {note}")
    return lines


def _row(
    name: str, variant: dict[str, Any], metrics: list[tuple[str, str, str]], extra: list[str]
) -> list[str]:
    row = [name]
    for key, _, unit in metrics:
        entry = variant["metrics"].get(key)
        row += ["-", "-"] if entry is None else [_fmt(entry["median"], unit), _range(entry, unit)]
    for column in extra:
        value = variant["info"].get(column)
        row.append("-" if value is None else _plain(value))
    return row


def _plain(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def _render(rows: list[list[str]], markdown: bool) -> list[str]:
    if markdown:
        out = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
        out += ["| " + " | ".join(row) + " |" for row in rows[1:]]
        return out
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows
    ]
