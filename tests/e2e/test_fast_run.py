"""``ci-compress run --fast``: overrides on top of the config as read, never a second
interpolation; the manifest keeps the file's text and says what was overridden."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tests.conftest import base_config, run_cli, write_config

FAST = {
    "data.holdout.limit": 200,
    "mlflow.enabled": False,
    "runtime.latency_repeats": 3,
    "runtime.latency_warmup": 1,
}


@pytest.mark.slow
def test_fast_keeps_the_config_text_and_the_rerun_reproduces(workdir: Path) -> None:
    raw = base_config(mlflow={"enabled": True, "tracking_uri": "http://127.0.0.1:9"})
    cfg = write_config(workdir, raw)
    proc = run_cli("run", "--config", str(cfg), "--fast", "--quiet", cwd=workdir)
    assert proc.returncode == 0, proc.stderr

    text = cfg.read_text()
    digest = hashlib.sha256(text.encode()).hexdigest()
    manifest = json.loads((workdir / "report" / "manifest.json").read_text())
    assert manifest["config"]["text"] == text
    assert manifest["config"]["text_sha256"] == digest == manifest["digests"]["config"]
    assert manifest["config"]["overrides"] == FAST
    report = json.loads((workdir / "report" / "report.json").read_text())
    assert report["holdout"]["samples"] == 200 and report["config"]["mlflow"]["enabled"] is False

    # the re-run applies the recorded overrides to the recorded text, and matches
    again = workdir / "again"
    proc = run_cli("reproduce", str(workdir / "report"), "--workdir", str(again), cwd=workdir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "MATCHES" in proc.stdout
    assert json.loads((again / "manifest.json").read_text())["config"]["overrides"] == FAST


@pytest.mark.slow
def test_fast_reads_each_variable_once(workdir: Path) -> None:
    raw = base_config(mlflow={"enabled": False, "run_name": "gate-${RUN_NAME}"})
    cfg = write_config(workdir, raw)
    env = {"RUN_NAME": "nightly-${NOT_SET}"}  # a value may hold "${" itself
    proc = run_cli("run", "--config", str(cfg), "--fast", "--quiet", cwd=workdir, env=env)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((workdir / "report" / "report.json").read_text())
    assert report["config"]["mlflow"]["run_name"] == "gate-${RUN_NAME}"
