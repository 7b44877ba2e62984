"""The benchmark harness keeps working: ``benchmarks/run.py --smoke`` exits 0 and writes
well-formed results.  Structure only: no timing is asserted (CI machines are noisy)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ["S1", "S2", "S3", "S3c", "S4", "S5", "S6", "S7", "S8"]
SMOKE_DEADLINE = 360
"""Seconds: about three times what the smoke run took on a 2-core machine at load average 9."""
FIVE = {"naive-sync", "naive-async", "plugin-sync", "plugin-async", "floor"}


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_summary(entry: dict[str, Any], repetitions: int) -> None:
    assert set(entry) == {"samples", "median", "min", "max"}
    assert len(entry["samples"]) == repetitions
    assert all(_is_number(v) for v in entry["samples"])
    assert _is_number(entry["median"])
    assert entry["min"] <= entry["median"] <= entry["max"]


def test_smoke_run_writes_well_formed_results(tmp_path: Path) -> None:
    output = tmp_path / "results.json"
    # The run's own deadline (smoke: 120 s) is a budget for a person running it by hand; on a
    # loaded CI machine the run took 123 s. Here only a hang must fail, and the harness's
    # deadline, a little before the subprocess timeout, says which scenario hung.
    command = [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--smoke"]
    command += ["--max-seconds", str(SMOKE_DEADLINE), "--output", str(output)]
    completed = subprocess.run(
        command,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=SMOKE_DEADLINE + 60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    assert "S1:" in completed.stdout
    assert "S6:" in completed.stdout

    results = json.loads(output.read_text())
    assert results["schema"] == 1
    assert results["mode"] == "smoke"
    assert results["platform_pid_differs"] is True
    machine = results["machine"]
    assert isinstance(machine["cpu_count"], int)
    assert isinstance(machine["python"], str)
    assert machine["libraries"]["line-bot-sdk"]
    assert machine["libraries"]["aiohttp"]
    repetitions = results["config"]["repetitions"]
    assert repetitions >= 1
    assert list(results["scenarios"]) == SCENARIOS

    for sid, scenario in results["scenarios"].items():
        assert scenario["id"] == sid
        assert scenario["title"]
        assert scenario["targets"] or sid == "S8", sid  # S8 (start-up) measures, no target
        for t in scenario["targets"]:
            assert set(t) == {"name", "value", "op", "threshold", "met"}
            assert t["op"] in (">=", "<=", "==")
            assert t["met"] in (True, False, None)
        for value in scenario["ratios"].values():
            assert value is None or _is_number(value)
        for variant in scenario["variants"].values():
            for key, _label, _unit in scenario["columns"]:
                samples = {"S6": 1, "S8": results["config"]["s8_runs"]}.get(sid, repetitions)
                _check_summary(variant["metrics"][key], samples)

    for sid in ("S1", "S2", "S3", "S3c", "S5"):
        assert set(results["scenarios"][sid]["variants"]) >= FIVE, sid
    assert set(results["scenarios"]["S4"]["variants"]) == {
        "sdk-sync",
        "plugin-sync",
        "sdk-async",
        "plugin-async",
    }
    # Counts, not timings: these follow from the protocol, whatever the machine.
    s2 = results["scenarios"]["S2"]["variants"]
    assert s2["plugin-sync"]["info"]["requests_per_body"] == 1
    assert s2["plugin-async"]["info"]["requests_per_body"] == 1
    assert s2["naive-sync"]["info"]["requests_per_body"] == 10
    assert all(v["info"]["requests"] == 0 for v in results["scenarios"]["S4"]["variants"].values())
    s3 = results["scenarios"]["S3"]["variants"]
    assert all(_is_number(v["metrics"]["cpu_us_per_event"]["median"]) for v in s3.values())
    assert set(results["scenarios"]["S7"]["variants"]) == FIVE
    s8 = results["scenarios"]["S8"]["ratios"]
    assert _is_number(s8["pytest start-up added by the plugin (ms)"])
    assert _is_number(s8["line-markread --help beyond the interpreter (ms)"])
    s6 = results["scenarios"]["S6"]["variants"]["plugin-async"]["info"]
    assert s6["messages"] == results["config"]["s6_messages"]
    assert s6["tracked_chats"] <= s6["max_tracked_chats"]
    assert s6["trace"]

    # The chart of the same run, beside it: one bar per ratio target.
    chart = ElementTree.fromstring((tmp_path / "results.svg").read_text(encoding="utf-8"))
    bars = chart.findall(".//{http://www.w3.org/2000/svg}rect")[1:]  # after the background
    ratio_targets = [
        t
        for s in results["scenarios"].values()
        for t in s["targets"]
        if " / " in t["name"] and t["op"] != "=="
    ]
    assert len(bars) == sum(t["value"] is not None for t in ratio_targets) > 0
