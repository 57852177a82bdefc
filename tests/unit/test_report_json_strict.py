"""report.json and manifest.json are strict JSON, with one documented rule for the
floats JSON has no number for: the strings "Infinity", "-Infinity" and "NaN"."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ci_compress.report import report_from_dict
from ci_compress.reporting.render import write_reports
from tests.unit.forged_report import forged_report


def _strict(text: str) -> Any:
    def refuse(name: str) -> None:
        raise AssertionError(f"not strict JSON: bare {name}")

    return json.loads(text, parse_constant=refuse)


def test_non_finite_figures_are_written_as_strings(tmp_path: Path) -> None:
    paths = write_reports(forged_report(), tmp_path)
    data = _strict(paths["report_json"].read_text())
    assert data["deltas"]["delta.compression_ratio"] == "Infinity"
    assert data["deltas"]["delta.latency_ratio"] == "NaN"
    assert data["metrics"]["student.latency_ms"] == "-Infinity"
    assert data["gate"]["checks"][0]["measured"] == "Infinity"
    assert _strict(paths["manifest_json"].read_text())["expected"] == {"x": "Infinity"}


def test_the_strings_read_back_as_numbers(tmp_path: Path) -> None:
    paths = write_reports(forged_report(), tmp_path)
    back = report_from_dict(json.loads(paths["report_json"].read_text()))
    assert back.deltas["delta.compression_ratio"] == math.inf
    assert math.isnan(back.deltas["delta.latency_ratio"])
    assert back.student.metrics["latency_ms"] == -math.inf
    assert back.gate.checks[0].measured == math.inf
