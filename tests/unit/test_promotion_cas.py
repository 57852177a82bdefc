"""Promotion is compare-and-swap: the alias moves only if it still points at the version
the gate compared itself with, under a server-side lock (``record.promotion_lock``).

On the in-memory tracker (the e2e proof with concurrent processes against a real MLflow
server is ``tests/e2e/test_registry_races.py``)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from ci_compress import pipeline, record
from ci_compress.config import load_config
from ci_compress.errors import ExitCode, TrackingError
from ci_compress.report import RegistryInfo
from ci_compress.tracking import MemoryTracker, ModelVersionRef
from tests.helpers.configs import base_config, write_config

GH_MAIN = {
    "GITHUB_ACTIONS": "true",
    "GITHUB_REF": "refs/heads/main",
    "GITHUB_REF_NAME": "main",
    "GITHUB_SHA": "a" * 40,
    "GITHUB_REPOSITORY": "acme/models",
}


def _registered(t: MemoryTracker, name: str, versions: int) -> None:
    t.start_run("e", "r", {})
    for _ in range(versions):
        t.register(name, "student", {})


def _info(name: str, version: str, compared_with: str = "none") -> RegistryInfo:
    return RegistryInfo(
        registered_model=name,
        version=version,
        source="",
        alias="champion",
        promotion="default-branch",
        promoted=False,
        will_promote=True,
        compared_with=compared_with,
    )


def _cas(t: MemoryTracker, info: RegistryInfo, expected: str | None, **kw: Any) -> RegistryInfo:
    opts: dict[str, Any] = {"holder": "gate-a", "ttl": 60.0, "wait": 0.0, "say": lambda _m: None}
    opts.update(kw)
    return record.compare_and_swap_alias(t, info, expected=expected, **opts)


def test_the_alias_moves_when_it_still_points_at_the_compared_version() -> None:
    t = MemoryTracker()
    _registered(t, "m", 2)
    t.set_alias("m", "champion", "1")
    out = _cas(t, _info("m", "2", "1"), "1")
    assert out.promoted and out.alias_was == "1" and out.promotion == "default-branch"
    assert t.get_alias("m", "champion") == "2"
    assert t._version("m", "2").tags["ci_compress.alias_was"] == "1"
    assert t.read_lock(record.lock_name("m")) is None  # released


def test_the_alias_stays_when_another_gate_moved_it_meanwhile() -> None:
    t = MemoryTracker()
    _registered(t, "m", 3)
    t.set_alias("m", "champion", "2")  # v2's gate promoted after v3's gate looked up v1
    out = _cas(t, _info("m", "3", "1"), "1")
    assert not out.promoted and not out.will_promote
    assert (out.promotion, out.alias_was, out.compared_with) == ("champion-moved", "2", "1")
    assert t.get_alias("m", "champion") == "2"
    tags = t._version("m", "3").tags
    assert tags["ci_compress.promotion"] == "champion-moved" and tags["candidate"] == "true"
    assert t.read_lock(record.lock_name("m")) is None


def test_a_first_promotion_expects_no_champion() -> None:
    t = MemoryTracker()
    _registered(t, "m", 2)
    t.set_alias("m", "champion", "1")  # someone promoted v1 while v2's gate saw none
    out = _cas(t, _info("m", "2"), None)
    assert out.promotion == "champion-moved" and t.get_alias("m", "champion") == "1"


def test_a_live_lock_is_waited_for_then_refused_with_exit_4() -> None:
    t = MemoryTracker()
    _registered(t, "m", 2)
    held = {record.LOCK_HOLDER: "gate-b", record.LOCK_EXPIRES: "9999999999"}
    assert t.create_lock(record.lock_name("m"), held)
    clock = iter(range(0, 1000, 10))
    with pytest.raises(TrackingError) as e:
        _cas(
            t,
            _info("m", "2"),
            None,
            wait=30.0,
            clock=lambda: float(next(clock)),
            sleep=lambda _s: None,
        )
    assert e.value.exit_code == ExitCode.INFRA
    assert "held by gate-b" in e.value.message and "the alias was not moved" in e.value.message
    assert t.get_alias("m", "champion") is None
    assert t.read_lock(record.lock_name("m")) == held  # someone else's lock is left alone


def test_a_stale_lock_of_a_crashed_job_is_broken() -> None:
    t = MemoryTracker()
    _registered(t, "m", 1)
    t.create_lock(record.lock_name("m"), {record.LOCK_HOLDER: "dead", record.LOCK_EXPIRES: "5"})
    said: list[str] = []
    out = _cas(t, _info("m", "1"), None, say=said.append, clock=lambda: 100.0)
    assert out.promoted and t.get_alias("m", "champion") == "1"
    assert any("breaking a stale promotion lock" in s and "dead" in s for s in said)
    assert t.read_lock(record.lock_name("m")) is None


def test_the_lock_is_released_when_the_alias_request_fails() -> None:
    class Refusing(MemoryTracker):
        def set_alias(self, name: str, alias: str, version: str) -> None:
            raise TrackingError("refused")

    t = Refusing()
    _registered(t, "m", 1)
    with pytest.raises(TrackingError):
        _cas(t, _info("m", "1"), None)
    assert t.read_lock(record.lock_name("m")) is None


def test_threads_racing_for_the_lock_promote_one_version_each_against_its_predecessor() -> None:
    """Eight gates that all compared with v1: exactly one moves the alias, the others
    are refused with champion-moved (none replaces a version it never compared with)."""
    t = MemoryTracker()
    _registered(t, "m", 9)
    t.set_alias("m", "champion", "1")
    results: dict[str, RegistryInfo] = {}

    def gate(version: str) -> None:
        results[version] = _cas(
            t, _info("m", version, "1"), "1", holder=f"gate-{version}", wait=30.0
        )

    threads = [threading.Thread(target=gate, args=(str(v),)) for v in range(2, 10)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    promoted = [v for v, r in results.items() if r.promoted]
    assert len(promoted) == 1 and t.get_alias("m", "champion") == promoted[0]
    assert all(r.promotion == "champion-moved" for v, r in results.items() if v not in promoted)


# ------------------------------------------------------------ the whole gate


class MovesTheAliasMeanwhile(MemoryTracker):
    """Another gate promotes its version while this one is being recorded."""

    rival: str | None = None

    def register(self, name: str, artifact_path: str, tags: Any) -> ModelVersionRef:
        ref = super().register(name, artifact_path, tags)
        if self.rival is None and self.get_alias(name, "champion") is not None:
            rival = super().register(
                name, artifact_path, {"ci_compress.promotion": "default-branch"}
            )
            self.rival = rival.version
            self.set_alias(name, "champion", rival.version)
        return ref


@pytest.mark.slow
def test_a_gate_does_not_promote_over_a_champion_it_never_compared_with(workdir: Path) -> None:
    cfg = base_config(
        mlflow={"enabled": True, "registered_model": "m", "experiment": "e"},
        thresholds={"max_accuracy_drop": 5.0, "max_accuracy_drop_vs_champion": 5.0},
    )
    loaded = load_config(write_config(workdir, cfg))
    t = MovesTheAliasMeanwhile()
    first = pipeline.run(loaded, tracker=t, environ=GH_MAIN, report_dir=workdir / "r1")
    assert first.registry is not None and first.registry.promoted  # v1, no champion before
    assert t.get_alias("m", "champion") == "1" and t.rival is None

    second = pipeline.run(loaded, tracker=t, environ=GH_MAIN, report_dir=workdir / "r2")
    assert second.passed and second.registry is not None
    assert second.registry.version == "2" and t.rival == "3"
    assert t.get_alias("m", "champion") == "3"  # the rival stays: v2 never compared with it
    assert second.registry.promotion == "champion-moved" and not second.registry.promoted
    assert (second.registry.compared_with, second.registry.alias_was) == ("1", "3")
    assert second.exit_code == ExitCode.CHAMPION_MOVED == 7
    tags = t._version("m", "2").tags
    assert tags["ci_compress.promotion"] == "champion-moved" and tags["candidate"] == "true"
    run = t.runs[second.mlflow.run_id if second.mlflow else ""]
    assert run["status"] == "FINISHED" and run["tags"]["ci_compress.promotion"] == "champion-moved"
    text = (workdir / "r2" / "report.md").read_text()
    assert "not moved (champion-moved): another gate moved it to version 3" in text


def test_a_stale_lease_replaced_before_the_break_is_left_alone() -> None:
    """Two gates find the same stale lease; the first breaks it and takes the lock; the
    second reads the lock again before deleting, sees a new lease, and does not delete it."""

    class Racer(MemoryTracker):
        reads = 0

        def read_lock(self, name: str) -> dict[str, str] | None:
            self.reads += 1
            if self.reads == 2:  # between our two reads another gate broke and re-took it
                self.delete_lock(name)
                self.create_lock(name, {record.LOCK_HOLDER: "gate-b", record.LOCK_EXPIRES: "500"})
            return super().read_lock(name)

    t = Racer()
    _registered(t, "m", 1)
    t.create_lock(record.lock_name("m"), {record.LOCK_HOLDER: "dead", record.LOCK_EXPIRES: "5"})
    clock = iter([100.0, 100.0, 101.0, 600.0, 600.0, 600.0, 600.0, 600.0])
    with pytest.raises(TrackingError) as e:  # gate-b's live lease outlasts our wait
        _cas(t, _info("m", "1"), None, wait=1.0, clock=lambda: next(clock), sleep=lambda _s: None)
    assert "held by gate-b" in e.value.message
    assert (t.read_lock(record.lock_name("m")) or {}).get(record.LOCK_HOLDER) == "gate-b"


def test_a_lock_that_cannot_be_released_after_a_promotion_is_said_not_raised() -> None:
    class NoDelete(MemoryTracker):
        def delete_lock(self, name: str) -> None:
            raise TrackingError("refused delete")

    t = NoDelete()
    _registered(t, "m", 1)
    said: list[str] = []
    out = _cas(t, _info("m", "1"), None, say=said.append)
    assert out.promoted and t.get_alias("m", "champion") == "1"
    assert any("could not release the promotion lock m.ci-compress-lock" in s for s in said)


def test_a_lock_broken_while_held_stops_the_alias_write() -> None:
    """A holder stalled past its lease, whose lock another gate broke and took, checks
    its lease right before the alias request and does not move the alias."""

    class Stalled(MemoryTracker):
        def set_version_tags(self, name: str, version: str, tags: Any) -> None:
            super().set_version_tags(name, version, tags)
            self.delete_lock(record.lock_name(name))
            self.create_lock(record.lock_name(name), {record.LOCK_HOLDER: "gate-b"})

    t = Stalled()
    _registered(t, "m", 1)
    with pytest.raises(TrackingError) as e:
        _cas(t, _info("m", "1"), None)
    assert "was broken while this gate held it" in e.value.message
    assert t.get_alias("m", "champion") is None
    assert (t.read_lock(record.lock_name("m")) or {}).get(record.LOCK_HOLDER) == "gate-b"
