"""``ci-compress run`` with a task other than classification, on the demo MLP (seconds).

A custom metric (the probability the model gives the true class) names the figures,
the checks, the table rows and the statistics; an export is compared by its largest
output difference, not by an argmax; the report reads back into the same typed report
and renders the same. The real models of each task are in
``tests/e2e/test_real_models_run.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ci_compress.evaluation.statistics import PairedScoreStatistics
from ci_compress.report import Report
from ci_compress.reporting.junit import junit_xml
from ci_compress.reporting.render import markdown, terminal
from tests.helpers.cli import run_cli
from tests.helpers.configs import base_config, write_config

SCORES = """
def true_class_probability(output, target):
    return output.softmax(1).gather(1, target[:, None])[:, 0]
"""


def gate(folder: Path, thresholds: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    config = base_config(
        task={"type": "custom", "metric": "scores:true_class_probability"},
        thresholds=thresholds,
        ship={"export": ["torchscript"]},
    )
    result = run_cli("run", "--config", str(write_config(folder, config)), "--quiet", cwd=folder)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads((folder / "report" / "report.json").read_text())


def test_a_custom_metric_names_every_figure_check_and_row(workdir: Path) -> None:
    (workdir / "scores.py").write_text(SCORES)
    name = "true_class_probability"
    code, data = gate(workdir, {"metrics": {name: {"max_drop": 0.05, "min_value": 0.5}}})
    assert code == 0, data["gate"]
    t, s = data["teacher"]["metrics"], data["student"]["metrics"]
    assert 0.5 < s[name] < 1.0 and 0.5 < t[name] < 1.0
    assert "accuracy" not in s and "agreement" not in s and "correct" not in s
    assert s["torchscript_max_abs_diff"] < 1e-3 and "torchscript_agreement" not in s
    assert data["metrics"][f"student.{name}"] == s[name]
    assert data["deltas"][f"delta.{name}.drop"] == t[name] - s[name]
    assert "delta.accuracy_drop_points" not in data["deltas"]
    assert data["statistics"]["metric"] == name and data["statistics"]["higher_is_better"]
    assert data["per_class"] == {}
    assert [c["threshold"] for c in data["gate"]["checks"]] == [
        f"metrics.{name}.max_drop",
        f"metrics.{name}.min_value",
    ]

    report = Report.from_dict(data)
    assert isinstance(report.statistics, PairedScoreStatistics)
    assert report.to_dict()["statistics"] == data["statistics"]
    text = terminal(report)
    assert text.startswith(f"ci-compress gate PASSED: {name} drop ")
    assert f"per-sample {name} (higher is better)" in text
    md = markdown(report)
    assert f"| {name} |" in md and "agreement with teacher" not in md
    assert f"`metrics.{name}.max_drop`" in md
    assert f'name="metrics.{name}.max_drop"' in junit_xml(report)

    # the same student against a value no probability reaches
    code, data = gate(workdir, {"metrics": {name: {"min_value": 1.5}}})
    assert code == 1
    (check,) = data["gate"]["checks"]
    assert check["threshold"] == f"metrics.{name}.min_value" and check["outcome"] == "fail"
    assert (
        f'<failure type="ThresholdExceeded" message="delta.{name}.value measured'
        in (workdir / "report" / "junit.xml").read_text()
    )


def test_a_multilabel_gate_on_one_hot_digits(workdir: Path) -> None:
    import numpy as np

    from ci_compress.loading.data import digits_split

    x, y = digits_split("test")
    np.savez(
        workdir / "holdout.npz",
        x=x.astype(np.float32),
        y=np.eye(10, dtype=np.float32)[y],  # one label per sample, as a 0/1 matrix
    )
    config = base_config(
        data={"holdout": {"path": "holdout.npz"}},
        task={"type": "multilabel"},
        thresholds={"metrics": {"f1": {"max_drop": 0.05}, "agreement": {"min_value": 0.9}}},
    )
    result = run_cli("run", "--config", str(write_config(workdir, config)), "--quiet", cwd=workdir)
    # a softmax classifier read label by label through a sigmoid: pruning and int8 move
    # many logits across 0, so the student's label sets agree with the teacher's on
    # about 70% of the digits, while its per-sample F1 does not drop
    assert result.returncode == 1, result.stdout
    data = json.loads((workdir / "report" / "report.json").read_text())
    t, s = data["teacher"]["metrics"], data["student"]["metrics"]
    assert {"f1", "exact_match", "agreement"} <= set(s) and "accuracy" not in s
    assert t["agreement"] == 1.0 and s["agreement"] < 0.9
    failed = [c["threshold"] for c in data["gate"]["checks"] if not c["passed"]]
    assert failed == ["metrics.agreement.min_value"]
    assert data["statistics"]["metric"] == "f1"
    assert data["deltas"]["delta.f1.drop"] == t["f1"] - s["f1"] < 0.05
    assert "F1 (per sample)" in result.stdout and "exact match" in result.stdout


def test_classification_limits_by_name_are_decided_on_the_accuracy_interval(
    workdir: Path,
) -> None:
    config = base_config(
        thresholds={
            "metrics": {"accuracy": {"max_drop": 0.015}, "macro_f1": {"max_drop": 0.05}},
            "decision": "confident",
        }
    )
    result = run_cli("run", "--config", str(write_config(workdir, config)), "--quiet", cwd=workdir)
    assert result.returncode == 0, result.stdout
    data = json.loads((workdir / "report" / "report.json").read_text())
    d = data["deltas"]
    checks = {c["threshold"]: c for c in data["gate"]["checks"]}
    accuracy = checks["metrics.accuracy.max_drop"]
    # the same interval as max_accuracy_drop's, as a fraction
    assert accuracy["ci_low"] == d["delta.accuracy_drop_ci_low"] / 100
    assert accuracy["ci_high"] == d["delta.accuracy_drop_ci_high"] / 100 <= 0.015
    assert checks["metrics.macro_f1.max_drop"]["ci_low"] is None  # no paired scores: a point
    assert "student.accuracy" in data["metrics"] and "delta.macro_f1.drop" in d
    assert "delta.agreement.drop" not in d  # only the metrics limited by name
