"""``benchmarks/bench_chart.py``: the benchmark table as an SVG, a pure function of the results."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any
from xml.etree import ElementTree

ROOT = Path(__file__).resolve().parent.parent
SVG = "{http://www.w3.org/2000/svg}"


def _chart_module() -> ModuleType:
    # benchmarks/ is a folder of scripts, not a package: load the file itself.
    spec = importlib.util.spec_from_file_location(
        "bench_chart", ROOT / "benchmarks" / "bench_chart.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_chart", module)
    spec.loader.exec_module(module)
    return module


bench_chart = _chart_module()


def _target(
    name: str, value: float | None, op: str, threshold: float, met: bool | None
) -> dict[str, Any]:
    return {"name": name, "value": value, "op": op, "threshold": threshold, "met": met}


RESULTS = {
    "mode": "smoke",
    "scenarios": {
        "S1": {
            "targets": [
                _target("S1 naive-sync / plugin-sync", 10.2, ">=", 9.5, True),
                _target("S1 naive-async / plugin-async", 8.3, ">=", 9.5, False),
            ]
        },
        "S2": {"targets": [_target("S2 plugin-sync requests per body", 1.0, "==", 1.0, True)]},
        "S3": {"targets": [_target("S3 plugin-sync / floor", None, ">=", 0.9, None)]},
        "S7": {
            "targets": [
                _target("S7 plugin-async median handler start / floor's", 0.5, "<=", 1.0, True)
            ]
        },
    },
}


def test_one_bar_per_ratio_target_coloured_by_verdict_with_its_target() -> None:
    svg = ElementTree.fromstring(bench_chart.chart_svg(RESULTS))

    bars = svg.findall(f"{SVG}rect")[1:]  # after the background
    assert [b.get("fill") for b in bars] == [bench_chart.MET, bench_chart.MISSED, bench_chart.MET]
    widths = [float(b.get("width", 0)) for b in bars]
    assert widths[0] > widths[1] > widths[2]  # 10.2x, 8.3x, 0.5x on one (log) axis
    texts = [t.text or "" for t in svg.iter(f"{SVG}text")]
    assert "S1  naive-sync / plugin-sync" in texts
    assert "\u2265 9.5x" in texts
    assert "\u2264 1x" in texts
    assert "no value" in texts  # S3 measured nothing: said so, not drawn as zero
    assert not any("requests per body" in t for t in texts)  # not a ratio: not on this chart
    targets = [line for line in svg.iter(f"{SVG}line") if line.get("stroke-width") == "2.5"]
    assert len(targets) == 4


def test_the_published_chart_is_the_one_the_published_figures_make() -> None:
    published = json.loads((ROOT / "benchmarks" / "published.json").read_text(encoding="utf-8"))

    assert bench_chart.chart_svg(published) == (ROOT / "docs" / "benchmarks.svg").read_text(
        encoding="utf-8"
    )
    assert "](benchmarks.svg)" in (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")


def test_no_targets_still_makes_a_valid_svg() -> None:
    svg = ElementTree.fromstring(bench_chart.chart_svg({"scenarios": {}}))

    assert any("no ratio targets" in (t.text or "") for t in svg.iter(f"{SVG}text"))
