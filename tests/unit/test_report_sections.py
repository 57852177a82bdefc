"""The typed Report: sections built once and never mutated, the JSON contract kept, the
registry and MLflow sections read as fields (the Action's model-version output), and
warnings as their own channel."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from ci_compress import pipeline
from ci_compress.ci.common import outputs
from ci_compress.config import load_config
from ci_compress.report import Report, report_from_dict
from ci_compress.reporting.junit import junit_xml
from ci_compress.reporting.render import markdown, terminal
from ci_compress.tracking import MemoryTracker, NullTracker
from tests.conftest import base_config, write_config

GH_MAIN = {"GITHUB_ACTIONS": "true", "GITHUB_REF": "refs/heads/main", "GITHUB_REF_NAME": "main"}


def _loaded(folder: Path, demo_dir: Path, **over: Any) -> Any:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(demo_dir / "digits_mlp.safetensors", folder / "digits_mlp.safetensors")
    return load_config(write_config(folder, base_config(**over)))


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory, demo_dir: Path) -> tuple[Report, Report]:
    """Two gates on the default branch: the first registers and promotes version 1, the
    second is compared against it (baseline), fails and is explained."""
    tmp = tmp_path_factory.mktemp("registered")
    tracker = MemoryTracker()
    reg = {"enabled": True, "registered_model": "m"}
    first = pipeline.run(
        _loaded(tmp / "a", demo_dir, passes=[{"type": "quantize"}], mlflow=reg),
        tracker=tracker,
        environ=GH_MAIN,
    )

    def fetch(uri: str, dest: Path) -> Any:
        from ci_compress.tracking import FetchedModel

        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(first.student.file, dest / "student.ccz")
        return FetchedModel(path=dest / "student.ccz", uri=uri)

    tracker.fetch = fetch  # type: ignore[method-assign]
    second = pipeline.run(
        _loaded(
            tmp / "b",
            demo_dir,
            mlflow=reg,
            thresholds={
                "max_accuracy_drop": 0.0,
                "max_class_drop": 0.0,
                "max_accuracy_drop_vs_champion": 0.0,
            },
            explain={"when": "fail", "max_exclude": 1},
        ),
        tracker=tracker,
        environ=GH_MAIN,
    )
    return first, second


def test_the_report_is_frozen_once_built(registered: tuple[Report, Report]) -> None:
    first, _ = registered
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.verdict = "fail"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.registry.promoted = False  # type: ignore[misc,union-attr]


def test_registry_and_mlflow_sections_are_typed_fields(registered: tuple[Report, Report]) -> None:
    first, second = registered
    assert first.registry is not None and first.registry.version == "1"
    assert first.registry.promoted is True and first.registry.promotion == "default-branch"
    assert first.mlflow is not None and first.mlflow.run_id == "run0"
    assert second.baseline is not None and second.baseline.status == "compared"
    assert second.baseline.version == "1"
    assert second.registry is not None and second.registry.promoted is False
    assert second.registry.promotion == "gate-failed"
    # the dict-shaped reads of schema 1 still answer, from the same fields
    assert first.registry["promoted"] is True and first.holdout["samples"] == 540


def test_the_model_version_output_is_the_registered_version(
    registered: tuple[Report, Report],
) -> None:
    """The GitHub/GitLab outputs read the registry section, which the pipeline writes
    (they used to read report.mlflow['model_version'], which nothing wrote: always empty)."""
    first, second = registered
    assert outputs(first, Path("r.json"))["model_version"] == "1"
    assert outputs(second, Path("r.json"))["model_version"] == "2"
    assert outputs(first, Path("r.json"))["mlflow_run_id"] == "run0"


def test_a_full_report_round_trips_through_json(registered: tuple[Report, Report]) -> None:
    _, second = registered
    data = json.loads(json.dumps(second.to_dict()))
    assert data["explain"] is not None and data["per_class"]["flagged"] is not None
    assert data["baseline"]["status"] == "compared" and data["registry"]["version"] == "2"
    again = report_from_dict(data)
    assert json.loads(json.dumps(again.to_dict())) == data
    assert again.registry == second.registry and again.baseline == second.baseline
    assert again.per_class == second.per_class and again.statistics == second.statistics
    assert markdown(again) == markdown(second) and junit_xml(again) == junit_xml(second)


def test_the_report_files_name_themselves(registered: tuple[Report, Report]) -> None:
    first, _ = registered
    written = json.loads(Path(first.artifacts.report_json or "").read_text())
    assert written["artifacts"] == first.to_dict()["artifacts"]
    assert written["registry"]["promoted"] is True  # rewritten after the alias moved


def test_a_run_without_mlflow_has_no_run_id(tmp_path: Path, demo_dir: Path) -> None:
    report = pipeline.run(_loaded(tmp_path, demo_dir), environ={})
    assert report.mlflow is not None and report.mlflow.run_id is None
    assert report.to_dict()["mlflow"]["run_id"] is None
    assert "mlflow run:" not in terminal(report)
    assert "MLflow run:" not in markdown(report)
    assert "mlflow.run_id" not in junit_xml(report)
    assert outputs(report, Path("r.json"))["mlflow_run_id"] == ""


def test_warnings_are_their_own_channel(tmp_path: Path, demo_dir: Path) -> None:
    """A warning goes to ``warn`` and into the report, never through progress as a
    'warning:' string that the pipeline sniffs back out."""
    loaded = _loaded(tmp_path, demo_dir, mlflow={"enabled": True, "registered_model": "m"})
    progress: list[str] = []
    warned: list[str] = []
    report = pipeline.run(
        loaded, tracker=NullTracker(), environ={}, progress=progress.append, warn=warned.append
    )
    assert warned == [
        "MLflow is not available: no registration, no promotion, champion checks skipped"
    ]
    assert list(report.warnings) == warned
    assert not any("warning" in line for line in progress)
    # without a warn callback, warnings reach the progress callback as before
    lines: list[str] = []
    pipeline.run(
        _loaded(tmp_path / "again", demo_dir, mlflow={"enabled": True, "registered_model": "m"}),
        tracker=NullTracker(),
        environ={},
        progress=lines.append,
    )
    assert f"warning: {warned[0]}" in lines
