"""The reproducibility manifest and `ci-compress reproduce`, for real: files, CLI runs
and the MLflow server."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from ci_compress.loading.data import digits_split
from tests.helpers.cli import run_cli
from tests.helpers.configs import base_config, write_config
from tests.helpers.servers import MlflowServer

pytestmark = pytest.mark.slow


def _holdout(folder: Path, *, change_one: bool = False) -> None:
    x, y = digits_split("test")
    if change_one:
        x = x.copy()
        x[17, 5] = 1.0 - x[17, 5]  # one pixel of one sample
    np.savez(folder / "holdout.npz", x=x, y=y)


def _run(folder: Path, **overrides: object) -> dict:
    cfg = write_config(folder, base_config(data={"holdout": {"path": "holdout.npz"}}, **overrides))
    proc = run_cli("run", "--config", str(cfg), "--quiet", cwd=folder)
    assert proc.returncode == 0, proc.stderr
    return json.loads((folder / "report" / "report.json").read_text())


def _run_in_process(folder: Path) -> dict:
    """The library call the CLI makes (cheaper than a subprocess for a second run)."""
    from ci_compress import pipeline
    from ci_compress.config import load_config

    cfg = write_config(folder, base_config(data={"holdout": {"path": "holdout.npz"}}))
    report = pipeline.run(load_config(cfg))
    assert json.loads((folder / "report" / "report.json").read_text()) == json.loads(
        json.dumps(report.to_dict())
    )
    return report.to_dict()


def test_manifest_records_versions_machine_seeds_and_digests(workdir: Path) -> None:
    _holdout(workdir)
    report = _run_in_process(workdir)
    manifest = report["reproducibility"]
    assert json.loads((workdir / "report" / "manifest.json").read_text()) == manifest
    import torch

    versions = manifest["versions"]
    assert versions["torch"] == torch.__version__ and versions["numpy"] == np.__version__
    assert versions["ci-compress"] and versions["mlflow"]
    assert "torchao" not in versions  # not a dependency: nothing of ours imports it
    assert versions["python"].count(".") == 2
    assert manifest["machine"]["cpu_model"] and manifest["machine"]["threads"] == 1
    assert manifest["seeds"] == {"runtime.seed": 0, "passes": [0, 1]}
    import hashlib

    digests = manifest["digests"]
    model_bytes = (workdir / "digits_mlp.safetensors").read_bytes()
    assert digests["model"] == hashlib.sha256(model_bytes).hexdigest()
    assert digests["holdout"] == report["holdout"]["sha256"]
    config_text = (workdir / "compress.yaml").read_text()
    assert digests["config"] == hashlib.sha256(config_text.encode()).hexdigest()
    assert manifest["config"]["text"] == config_text
    assert digests["student"] == report["student"]["sha256"]
    assert [p["name"] for p in manifest["passes"]] == ["prune", "quantize"]
    assert manifest["expected"]["measurements"]["student.correct"] == float(
        report["student"]["metrics"]["correct"]
    )
    assert not any("latency" in k for k in manifest["expected"]["measurements"])

    # One pixel of one holdout sample changes the holdout digest, and only that.
    _holdout(workdir, change_one=True)
    changed = _run_in_process(workdir)["reproducibility"]["digests"]
    assert changed["holdout"] != digests["holdout"]
    assert (changed["model"], changed["config"]) == (digests["model"], digests["config"])


def test_reproduce_matches_in_a_fresh_directory_and_catches_a_changed_model(
    workdir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    _holdout(workdir)
    report = _run(workdir)
    fresh = tmp_path_factory.mktemp("fresh") / "rerun"
    proc = run_cli(
        "reproduce", "report/report.json", "--workdir", str(fresh), "--quiet", cwd=workdir
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "the re-run MATCHES" in proc.stdout and "digests: 4/4 equal" in proc.stdout
    rerun = json.loads((fresh / "report.json").read_text())
    assert rerun["student"]["sha256"] == report["student"]["sha256"]
    assert rerun["metrics"]["student.accuracy"] == report["metrics"]["student.accuracy"]

    # Same weights file name, one weight changed: the digest and the numbers say so.
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(workdir / "digits_mlp.safetensors"))
    tensors["4.bias"][3] += 1.0
    save_file(tensors, str(workdir / "digits_mlp.safetensors"))
    proc = run_cli("reproduce", str(workdir / "report"), "--quiet", "--json", cwd=workdir)
    assert proc.returncode == 1, proc.stderr
    result = json.loads(proc.stdout)
    diffs = {c["name"] for c in result["comparisons"] if not c["matched"]}
    assert {"model", "student"} <= diffs and "holdout" not in diffs and "config" not in diffs
    assert Path(result["workdir"]) != workdir / "report"


def test_reproduce_an_mlflow_run_by_id(workdir: Path, mlflow_server: MlflowServer) -> None:
    _holdout(workdir)
    report = _run(
        workdir,
        mlflow={"enabled": True, "tracking_uri": mlflow_server.uri, "experiment": "reproduce"},
    )
    run_id = report["mlflow"]["run_id"]
    from mlflow import MlflowClient

    names = {f.path for f in MlflowClient(tracking_uri=mlflow_server.uri).list_artifacts(run_id)}
    assert "manifest.json" in names
    shutil.rmtree(workdir / "report")  # only the MLflow record is left
    proc = run_cli(
        "reproduce", run_id, "--quiet", cwd=workdir, env={"MLFLOW_TRACKING_URI": mlflow_server.uri}
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"MATCHES MLflow run {run_id}" in proc.stdout

    proc = run_cli("reproduce", "0" * 32, "--tracking-uri", mlflow_server.uri, cwd=workdir)
    assert proc.returncode == 3 and "not found" in proc.stderr and "Traceback" not in proc.stderr


def test_reproduce_input_errors_are_one_line(tmp_path: Path) -> None:
    proc = run_cli("reproduce", "missing.json", cwd=tmp_path)
    assert proc.returncode == 3 and "neither a report file nor an MLflow run id" in proc.stderr
    proc = run_cli("reproduce", "a" * 32, cwd=tmp_path)
    assert proc.returncode == 2 and "needs a tracking URI" in proc.stderr
    (tmp_path / "old.json").write_text(json.dumps({"verdict": "pass"}))
    proc = run_cli("reproduce", "old.json", cwd=tmp_path)
    assert proc.returncode == 3 and "no reproducibility manifest" in proc.stderr
    for p in (proc,):
        assert "Traceback" not in p.stderr
