"""The CLI in process, through the group's error boundary: exit codes, one-line errors,
no tracebacks. (The console script as a real process: tests/e2e/test_console_script.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.helpers import REPO
from tests.helpers.cli import CliResult, run_cli
from tests.helpers.configs import base_config, write_config


def _one_line_error(proc: CliResult) -> str:
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_bad_config_exits_2_with_the_field_path(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, base_config(passes=[{"type": "prune", "amount": 1.5}]))
    proc = run_cli("run", "--config", str(cfg), cwd=tmp_path)
    assert proc.returncode == 2
    assert _one_line_error(proc) == "Error: passes[0].amount: must be in [0, 1), got 1.5"


def test_validate_reports_ok_and_errors(tmp_path: Path) -> None:
    good = write_config(tmp_path, base_config())
    proc = run_cli("validate", "--config", str(good), cwd=tmp_path)
    assert proc.returncode == 0 and "valid" in proc.stdout
    bad = write_config(tmp_path, base_config(thresholds={"max_acuracy_drop": 1}), name="bad.yaml")
    proc = run_cli("validate", "--config", str(bad), cwd=tmp_path)
    assert proc.returncode == 2 and "did you mean 'max_accuracy_drop'" in _one_line_error(proc)


def test_missing_config_file_exits_2(tmp_path: Path) -> None:
    proc = run_cli("run", "--config", "nope.yaml", cwd=tmp_path)
    assert proc.returncode == 2 and "config file not found" in _one_line_error(proc)


def test_missing_model_file_exits_3(tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path,
        base_config(
            model={"path": "missing.safetensors", "factory": "ci_compress.demo.models:digits_mlp"}
        ),
    )
    proc = run_cli("run", "--config", str(cfg), cwd=tmp_path)
    assert proc.returncode == 3
    assert _one_line_error(proc).startswith("Error: model file not found:")


def test_pickled_module_is_refused_without_opt_in(workdir: Path) -> None:
    from ci_compress.demo.models import digits_mlp

    torch.save(digits_mlp(), workdir / "full.pt")
    cfg = write_config(workdir, base_config(model={"path": "full.pt"}))
    proc = run_cli("run", "--config", str(cfg), cwd=workdir)
    assert proc.returncode == 3 and "refused" in _one_line_error(proc)


def test_schema_prints_json() -> None:
    proc = run_cli("schema", cwd=REPO)
    assert proc.returncode == 0
    assert json.loads(proc.stdout)["title"] == "ci-compress config"


@pytest.mark.slow
def test_loose_threshold_passes_and_tight_one_fails_on_the_same_model(workdir: Path) -> None:
    loose = write_config(
        workdir, base_config(thresholds={"max_accuracy_drop": 5.0}), name="loose.yaml"
    )
    tight = write_config(
        workdir,
        base_config(thresholds={"max_accuracy_drop": 0.0, "min_compression_ratio": 1000}),
        name="tight.yaml",
    )
    ok = run_cli("run", "--config", str(loose), "--quiet", cwd=workdir)
    assert ok.returncode == 0, ok.stderr
    bad = run_cli("run", "--config", str(tight), "--quiet", cwd=workdir)
    assert bad.returncode == 1, bad.stderr
    assert "gate FAILED" in bad.stdout and "[FAIL] min_compression_ratio" in bad.stdout
    report = json.loads((workdir / "report" / "report.json").read_text())
    assert report["verdict"] == "fail"
    assert [c["threshold"] for c in report["gate"]["checks"] if not c["passed"]] == [
        "min_compression_ratio"
    ] or report["metrics"]["delta.accuracy_drop_points"] > 0
