"""Explaining a verdict on the demo CNN: per-layer sensitivity, the verified exclude list,
per-class regressions. Every number is measured by real runs of the CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from mlflow import MlflowClient

from tests.helpers.cli import run_cli
from tests.helpers.configs import cnn_config, write_config
from tests.helpers.servers import MlflowServer

pytestmark = pytest.mark.slow

# Prune 60% of every layer's weights, then int8-quantize the Linear layers. The first
# convolution (module "1": 144 weights feeding everything) cannot take it; the rest can.
FRAGILE_PASSES: list[dict[str, Any]] = [
    {"type": "prune", "amount": 0.6, "scope": "layer"},
    {"type": "quantize"},
]


# The classifier head ("11") clustered to 1 bit (two shared values), every other layer
# clustered to 4 bits.
CLUSTERED_HEAD: list[dict[str, Any]] = [
    {"type": "cluster", "bits": 1, "include": ["11"]},
    {"type": "cluster", "bits": 4, "exclude": ["11"]},
]


@pytest.mark.parametrize(
    ("passes", "fragile", "kind", "fragile_passes", "suggested_passes"),
    [
        (
            FRAGILE_PASSES,
            "1",
            "Conv2d",
            ["prune"],
            [{"index": 0, "type": "prune", "exclude": ["1"]}],
        ),
        (
            CLUSTERED_HEAD,
            "11",
            "Linear",
            ["cluster"],
            # passes[0] touched only '11': excluding it leaves a pass that changes
            # nothing, which the gate refuses, so explain says to remove it
            [{"index": 0, "type": "cluster", "exclude": ["11"], "remove": True}],
        ),
    ],
    ids=["prune-first-conv", "cluster-head-1bit"],
)
def test_explain_ranks_the_fragile_layer_first_and_its_exclude_list_passes_the_gate(
    cnn_workdir: Path,
    passes: list[dict[str, Any]],
    fragile: str,
    kind: str,
    fragile_passes: list[str],
    suggested_passes: list[dict[str, Any]],
) -> None:
    cfg = cnn_config(passes=passes, thresholds={"max_accuracy_drop": 2.0})
    failing = write_config(cnn_workdir, cfg, name="fragile.yaml")
    gate = run_cli("run", "--config", str(failing), "--quiet", cwd=cnn_workdir)
    assert gate.returncode == 1, gate.stderr
    gate_drop = json.loads((cnn_workdir / "report" / "report.json").read_text())["deltas"][
        "delta.accuracy_drop_points"
    ]
    assert gate_drop > 2.0

    proc = run_cli("explain", "--config", str(failing), "--quiet", cwd=cnn_workdir)
    assert proc.returncode == 0, proc.stderr
    print(proc.stdout)  # the ranking table, for the record
    data = json.loads((cnn_workdir / "report" / "explain.json").read_text())
    ranking = [layer["layer"] for layer in data["layers"]]
    assert sorted(ranking) == ["1", "11", "4", "9"]  # every layer a pass touched
    first, *rest = data["layers"]
    assert first["layer"] == fragile and first["kind"] == kind
    assert first["passes"] == fragile_passes
    assert first["drop_points"] > 5.0
    assert all(first["drop_points"] > 5 * max(r["drop_points"], 0.2) for r in rest)
    if passes is FRAGILE_PASSES:  # Linear layers get both passes, restricted to them
        assert {tuple(r["passes"]) for r in rest if r["kind"] == "Linear"} == {
            ("prune", "quantize")
        }
    # the configured compression, measured by explain, is the gate's own number
    assert data["full"]["drop_points"] == pytest.approx(gate_drop, abs=1e-9)
    assert data["full"]["accuracy_passed"] is False

    assert data["suggested_exclude"] == [fragile]
    assert data["suggested_passes"] == suggested_passes
    verified = data["steps"][-1]
    assert verified["exclude"] == [fragile] and verified["accuracy_passed"] is True
    row = rf"^\s+1\s+{fragile}\s+{kind}\s+{fragile_passes[0]}\s"
    assert re.search(row, proc.stdout, re.M), proc.stdout
    assert f"suggested exclude: ['{fragile}']" in proc.stdout

    png = (cnn_workdir / "report" / "sensitivity.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000
    md_row = f"| 1 | `{fragile}` | {kind} | {fragile_passes[0]} |"
    assert md_row in (cnn_workdir / "report" / "explain.md").read_text()

    # Apply the suggestion to the config and run the real gate: it passes now.
    fixed = [dict(p) for p in passes]
    for s in data["suggested_passes"]:
        fixed[s["index"]]["exclude"] = s["exclude"]
    removed = {s["index"] for s in data["suggested_passes"] if s.get("remove")}
    fixed = [p for i, p in enumerate(fixed) if i not in removed]
    passing = write_config(
        cnn_workdir,
        cnn_config(passes=fixed, thresholds={"max_accuracy_drop": 2.0}, report={"dir": "fixed"}),
        name="fixed.yaml",
    )
    gate = run_cli("run", "--config", str(passing), "--quiet", cwd=cnn_workdir)
    assert gate.returncode == 0, gate.stdout + gate.stderr
    report = json.loads((cnn_workdir / "fixed" / "report.json").read_text())
    # explain's verification run measured exactly what the gate measures
    assert report["deltas"]["delta.accuracy_drop_points"] == pytest.approx(
        verified["drop_points"], abs=1e-9
    )
    assert report["student"]["file_bytes"] == verified["file_bytes"]


def test_run_explains_a_failed_gate_into_the_report_and_mlflow(
    cnn_workdir: Path, mlflow_server: MlflowServer
) -> None:
    cfg = cnn_config(
        passes=FRAGILE_PASSES,
        thresholds={"max_accuracy_drop": 2.0},
        explain={"when": "fail"},
        mlflow={"enabled": True, "tracking_uri": mlflow_server.uri, "experiment": "explain-e2e"},
    )
    proc = run_cli(
        "run", "--config", str(write_config(cnn_workdir, cfg)), "--quiet", cwd=cnn_workdir
    )
    assert proc.returncode == 1, proc.stderr
    assert "per-layer sensitivity" in proc.stdout and "suggested exclude: ['1']" in proc.stdout
    report = json.loads((cnn_workdir / "report" / "report.json").read_text())
    assert report["explain"]["layers"][0]["layer"] == "1"
    assert report["explain"]["suggested_exclude"] == ["1"]
    md = (cnn_workdir / "report" / "report.md").read_text()
    assert "### Per-layer sensitivity" in md and "Per-class accuracy" in md
    client = MlflowClient(tracking_uri=mlflow_server.uri)
    names = {f.path for f in client.list_artifacts(report["mlflow"]["run_id"])}
    assert {"sensitivity.png", "manifest.json", "report.json", "report.md"} <= names

    # when: fail does not spend time explaining a gate that passes
    cfg["thresholds"] = {"max_accuracy_drop": 50.0}
    proc = run_cli(
        "run", "--config", str(write_config(cnn_workdir, cfg)), "--quiet", cwd=cnn_workdir
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads((cnn_workdir / "report" / "report.json").read_text())["explain"] is None

    # a standalone analysis is recorded as its own run
    proc = run_cli("explain", "--config", str(cnn_workdir / "compress.yaml"), "-q", cwd=cnn_workdir)
    assert proc.returncode == 0, proc.stderr
    run_id = re.search(r"mlflow run: (\w+)", proc.stdout).group(1)  # type: ignore[union-attr]
    run = client.get_run(run_id)
    assert run.data.tags["ci_compress.kind"] == "explain"
    assert run.data.metrics["explain.drop_points.1"] > 5.0
    names = {f.path for f in client.list_artifacts(run_id)}
    assert {"explain.json", "explain.md", "sensitivity.png"} <= names


def _per_class_accuracy(model: torch.nn.Module) -> dict[int, float]:
    from ci_compress.loading.data import digits_split

    x, y = (torch.from_numpy(a) for a in digits_split("test"))
    with torch.inference_mode():
        pred = model.eval()(x).argmax(1)
    return {c: float((pred[y == c] == c).float().mean()) for c in range(10)}


def test_a_collapsed_class_fails_the_gate_while_the_overall_drop_passes(
    cnn_workdir: Path,
) -> None:
    # Prune 97% of the hidden Linear layer ("9") only: overall a few points, but the
    # digit "1" loses a quarter of its accuracy.
    cfg = cnn_config(
        passes=[{"type": "prune", "amount": 0.97, "include": ["9"]}],
        thresholds={"max_accuracy_drop": 4.0, "max_class_drop": 10.0},
    )
    proc = run_cli(
        "run", "--config", str(write_config(cnn_workdir, cfg)), "--quiet", cwd=cnn_workdir
    )
    assert proc.returncode == 1, proc.stderr
    report = json.loads((cnn_workdir / "report" / "report.json").read_text())
    checks = {c["threshold"]: c for c in report["gate"]["checks"]}
    assert checks["max_accuracy_drop"]["passed"] is True
    assert checks["max_class_drop"]["passed"] is False
    assert "(class 1)" in checks["max_class_drop"]["message"]
    assert "[FAIL] max_class_drop" in proc.stdout and "(class 1)" in proc.stdout

    # Check the per-class figures independently, from the shipped file and the teacher.
    from safetensors.torch import load_file

    from ci_compress.demo.models import digits_cnn
    from ci_compress.packing.file import load_packed

    teacher = digits_cnn()
    teacher.load_state_dict(load_file(str(cnn_workdir / "digits_cnn.safetensors")))
    student, _ = load_packed(cnn_workdir / "report" / "student.ccz", factory=digits_cnn)
    t, s = _per_class_accuracy(teacher), _per_class_accuracy(student)
    drops = {c: (t[c] - s[c]) * 100 for c in t}
    worst = max(drops, key=lambda c: drops[c])
    assert worst == 1 and drops[1] > 10.0
    assert checks["max_class_drop"]["measured"] == pytest.approx(drops[1], abs=1e-4)
    assert report["deltas"]["delta.accuracy_drop_points"] < 4.0
    row = report["per_class"]["classes"][1]
    assert row["label"] == "1" and row["samples"] == 55
    assert row["accuracy"]["student"] == pytest.approx(s[1], abs=1e-6)
    assert row["drop_points"]["student"] == pytest.approx(drops[1], abs=1e-4)
    assert report["per_class"]["worst"]["student"]["label"] == "1"
    assert report["per_class"]["flagged"] == [str(c) for c in sorted(drops) if drops[c] > 10.0]
    assert (
        "**Classes over `max_class_drop` (10 points):** `1`"
        in (cnn_workdir / "report" / "report.md").read_text()
    )
    assert sum(r["samples"] for r in report["per_class"]["classes"]) == 540
    assert (
        sum(r["correct"]["student"] for r in report["per_class"]["classes"])
        == report["student"]["metrics"]["correct"]
    )


def test_explain_measures_each_student_in_the_runtime_that_serves_it(cnn_workdir: Path) -> None:
    """With ship.runtime onnxruntime and its int8, explain's numbers are the served
    student's, as the gate's are: before, explain evaluated the torch fp32 .ccz."""
    cfg = cnn_config(
        passes=[{"type": "prune", "amount": 0.6, "scope": "layer"}],
        data={
            "holdout": {"builtin": "digits", "split": "test"},
            "calibration": {"builtin": "digits", "split": "train"},
        },
        ship={"runtime": "onnxruntime", "quantize": "int8"},
        thresholds={"max_accuracy_drop": 2.0},
    )
    config = write_config(cnn_workdir, cfg, name="served.yaml")
    gate = run_cli("run", "--config", str(config), "--quiet", cwd=cnn_workdir)
    assert gate.returncode in (0, 1), gate.stderr
    report = json.loads((cnn_workdir / "report" / "report.json").read_text())
    assert report["serving"]["runtime"] == "onnxruntime"

    proc = run_cli("explain", "--config", str(config), "--quiet", cwd=cnn_workdir)
    assert proc.returncode == 0, proc.stderr
    data = json.loads((cnn_workdir / "report" / "explain.json").read_text())
    full = data["full"]
    # the int8 ONNX file's bytes and accuracy (the gate's figures), not the .ccz's
    assert full["file_bytes"] == report["serving"]["file_bytes"]
    assert full["file_bytes"] != report["serving"]["ccz_bytes"]
    assert full["drop_points"] == pytest.approx(
        report["deltas"]["delta.accuracy_drop_points"], abs=1e-9
    )
    assert sorted(layer["layer"] for layer in data["layers"]) == ["1", "11", "4", "9"]
    # nothing the runtime wrote is left beside the report
    assert not list((cnn_workdir / "report").glob("student-*"))
