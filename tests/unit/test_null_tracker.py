"""NullTracker (mlflow.enabled: false) records nothing anyone reads, so it refuses
nothing MLflow would refuse and keeps no files; the in-memory tracker refuses it all
(tests/helpers/tracker_contract.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ci_compress.errors import TrackingError
from ci_compress.tracking import MemoryTracker, NullTracker


def _odd_writes(t: MemoryTracker, tmp_path: Path) -> None:
    t.start_run("e", "r", {})
    t.log_params({"data.holdout.kwargs.lr@2": "1"})
    t.log_params({"data.holdout.kwargs.lr@2": "2"})
    t.log_metrics({"acc%": 1.0})
    t.set_tags({"a{b}": "v"})
    t.log_artifact(tmp_path / "missing.ccz", "student")
    t.end_run("DONE")


def test_the_null_tracker_takes_anything_and_keeps_no_files(tmp_path: Path) -> None:
    t = NullTracker()
    _odd_writes(t, tmp_path)
    (real := tmp_path / "student.ccz").write_bytes(b"x")
    t.log_artifact(real, "student")
    assert t.files == {}


def test_the_in_memory_tracker_refuses_what_mlflow_refuses(tmp_path: Path) -> None:
    with pytest.raises(TrackingError):
        _odd_writes(MemoryTracker(), tmp_path)
