"""One writer of an MLflow run's lifecycle: ``record.recorded_run`` marks a run FINISHED
or FAILED for the gate, explain and tune alike; a tracker that records nothing gives a
run without an id."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ci_compress import record
from ci_compress.ci.env import CIContext
from ci_compress.errors import TrackingError
from ci_compress.tracking import MemoryTracker, NullTracker


class _Failing(MemoryTracker):
    """Refuses one method, to show the failure marking is best effort."""

    def __init__(self, refuse: str) -> None:
        super().__init__()
        self.refuse = refuse

    def set_tags(self, tags: Any) -> None:
        if self.refuse == "set_tags":
            raise TrackingError("refused set_tags")
        super().set_tags(tags)


def _ours(tags: dict[str, str]) -> dict[str, str]:
    """The tags the code under test set (MLflow, and the honest fake, add mlflow.* ones)."""
    return {k: v for k, v in tags.items() if not k.startswith("mlflow.")}


def test_a_run_ends_finished_when_its_body_returns() -> None:
    t = MemoryTracker()
    with record.recorded_run(t, "e", "n", {"k": "v"}) as run:
        assert run.run_id == "run0"
        t.log_metrics({"m": 1.0})
    assert t.runs["run0"]["status"] == "FINISHED" and _ours(t.runs["run0"]["tags"]) == {"k": "v"}


def test_a_run_ends_failed_with_its_failure_tags_when_its_body_raises() -> None:
    t = MemoryTracker()
    with (
        pytest.raises(KeyError),
        record.recorded_run(t, "e", "n", {}, failed_tags={"ci_compress.status": "failed"}),
    ):
        raise KeyError("boom")
    assert t.runs["run0"]["status"] == "FAILED"
    assert _ours(t.runs["run0"]["tags"]) == {"ci_compress.status": "failed"}


def test_a_failure_while_marking_the_run_failed_does_not_hide_the_first_error() -> None:
    t = _Failing("set_tags")
    with pytest.raises(KeyError), record.recorded_run(t, "e", "n", {}, failed_tags={"a": "b"}):
        raise KeyError("the real error")
    assert t.runs["run0"]["status"] == "RUNNING"  # the server refused; best effort only


def test_a_settled_run_is_not_marked_failed_by_a_later_error() -> None:
    t = MemoryTracker()
    with pytest.raises(KeyError), record.recorded_run(t, "e", "n", {}) as run:
        run.finish({"ci_compress.verdict": "pruned"})
        raise KeyError("after the run was finished")
    assert t.runs["run0"]["status"] == "FINISHED"


def test_a_run_on_a_tracker_that_records_nothing_has_no_id() -> None:
    with record.recorded_run(NullTracker(), "e", "n", {}) as run:
        assert run.run_id is None


def test_explain_is_recorded_as_its_own_run(tmp_path: Path) -> None:
    t = MemoryTracker()
    result = {
        "layers": [{"layer": "fc1", "drop_points": 1.5}, {"layer": "fc2", "drop_points": 0.2}],
        "full": {"drop_points": 2.0},
        "suggested_exclude": ["fc1"],
    }
    chart = tmp_path / "sensitivity.png"
    chart.write_bytes(b"png")
    run_id = record.record_explain(
        t,
        experiment="e",
        ci=CIContext(provider="local", commit="0123456789"),
        result=result,
        paths={"sensitivity_png": chart},
    )
    assert run_id == "run0"
    run = t.runs["run0"]
    assert run["name"] == "explain-01234567" and run["status"] == "FINISHED"
    assert run["tags"]["ci_compress.kind"] == "explain"
    assert run["tags"]["ci_compress.suggested_exclude"] == "fc1"
    assert run["metrics"] == {
        "explain.drop_points.fc1": 1.5,
        "explain.drop_points.fc2": 0.2,
        "explain.full.drop_points": 2.0,
        "explain.suggested_exclude_count": 1.0,
    }
    assert run["artifacts"] == ["sensitivity.png"]
    assert (
        record.record_explain(
            NullTracker(), experiment="e", ci=CIContext("local"), result=result, paths={}
        )
        is None
    )
