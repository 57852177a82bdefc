"""The explain renderers label a task other than classification with its primary metric,
in its own units, and leave classification's table as it was."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ci_compress.reporting.explain import markdown_section, terminal_table, write_chart


def _result(metric: dict[str, Any] | None, thresholds: dict[str, float]) -> dict[str, Any]:
    layer = {
        "layer": "fc1", "kind": "Linear", "passes": ["quantize"], "parameters": 1000,
        "accuracy": 0.93, "drop_points": 1.5, "file_bytes": 500, "bytes_saved": 1200,
        "worst_class": None, "worst_class_drop_points": None,
    }  # fmt: skip
    step = {
        "exclude": [], "accuracy": 0.93, "drop_points": 1.5, "file_bytes": 400,
        "figures": {"delta.compression_ratio": 3.0}, "accuracy_passed": False,
        "gate_passed": False, "failures": ["x"],
    }  # fmt: skip
    data = {
        "teacher_accuracy": 0.945, "teacher_file_bytes": 1700, "samples": 100,
        "thresholds": thresholds, "full": step, "layers": [layer], "steps": [step],
        "suggested_exclude": None, "suggested_passes": [], "notes": [],
    }  # fmt: skip
    if metric is not None:
        data["metric"] = metric
    return data


def test_classification_table_keeps_accuracy_and_points(tmp_path: Path) -> None:
    data = _result(None, {"max_accuracy_drop": 1.0})
    table = terminal_table(data)
    assert "drop (pts)" in table and "93.00%" in table
    assert "configured compression: accuracy drop 1.50 points (accuracy thresholds FAILED)" in table
    assert "accuracy drop on the holdout, most sensitive first." in markdown_section(data)
    write_chart(data, tmp_path / "c.png")


def test_a_language_model_table_speaks_nll(tmp_path: Path) -> None:
    metric = {"task": "language-model", "name": "nll", "higher_is_better": False}
    data = _result(metric, {"metrics.nll.max_increase": 0.1})
    data["layers"][0].update(accuracy=3.2126, drop_points=0.0375)
    data["full"].update(drop_points=0.0375)
    table = terminal_table(data)
    assert "nll increase" in table and "3.213" in table and "0.0375" in table
    assert "%" not in table and "pts" not in table and "accuracy" not in table
    assert "configured compression: nll increase 0.0375 (nll thresholds FAILED)" in table
    md = markdown_section(data)
    assert "nll increase on the holdout, most sensitive first." in md
    assert "| rank | layer | type | passes | params | nll increase | nll |" in md
    assert "accuracy" not in md
    assert write_chart(data, tmp_path / "c.png").stat().st_size > 0
