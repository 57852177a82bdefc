"""Decisions that do not flip on noise, and warnings where noise decides (issue 16 item 8).

A one-sample holdout and a teacher whose dropout stays on both passed silently; a
latency threshold was compared as a point. Each case runs the real CLI in process.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.cli import run_cli
from tests.helpers.configs import base_config, write_config


def gate(workdir: Path, config: dict[str, Any]) -> tuple[int, dict[str, Any], str]:
    path = write_config(workdir, config)
    proc = run_cli("run", "--config", str(path), "--quiet", cwd=workdir)
    assert "Traceback" not in proc.stdout + proc.stderr
    report = json.loads((workdir / "report" / "report.json").read_text())
    return proc.returncode, report, proc.stdout + proc.stderr


@pytest.mark.slow
def test_a_one_sample_holdout_warns_that_it_decides_nothing(workdir: Path) -> None:
    _, report, out = gate(workdir, base_config(data={"holdout": {"builtin": "digits", "limit": 1}}))
    assert report["holdout"]["samples"] == 1
    (warning,) = [w for w in report["warnings"] if "too few to decide anything" in w]
    assert "has 1 sample(s)" in warning and "100 points" in warning
    assert "warning: the holdout digits/test has 1 sample(s)" in out


@pytest.mark.slow
def test_a_holdout_of_hundreds_does_not_warn(workdir: Path) -> None:
    _, report, _ = gate(workdir, base_config())
    assert not [w for w in report["warnings"] if "too few" in w or "deterministic" in w]


@pytest.mark.slow
def test_a_teacher_with_dropout_left_on_is_reported_as_not_deterministic(workdir: Path) -> None:
    from safetensors.torch import save_file

    from tests.helpers.bad_models import train_mode_dropout_model

    save_file(train_mode_dropout_model().state_dict(), str(workdir / "drop.safetensors"))
    model = {
        "path": "drop.safetensors",
        "factory": "tests.helpers.bad_models:train_mode_dropout_model",
    }
    _, report, out = gate(
        workdir,
        base_config(
            model=model,
            passes=[{"type": "prune", "amount": 0.5}],
            thresholds={"max_accuracy_drop": 100.0},
        ),
    )
    (warning,) = [w for w in report["warnings"] if "not deterministic" in w]
    assert "two forward passes on the same batch of data.holdout differ by up to" in warning
    assert "warning: the teacher is not deterministic" in out


@pytest.mark.slow
def test_the_latency_ratio_is_paired_with_an_interval_and_decided_on_it(workdir: Path) -> None:
    code, report, _ = gate(
        workdir,
        base_config(
            thresholds={"max_latency_ratio": 100.0, "decision": "confident"},
            runtime={"latency_repeats": 12, "latency_warmup": 1},
        ),
    )
    d = report["deltas"]
    assert d["delta.latency_ratio_ci_low"] <= d["delta.latency_ratio"]
    assert d["delta.latency_ratio"] <= d["delta.latency_ratio_ci_high"]
    (check,) = report["gate"]["checks"]
    assert check["outcome"] == "pass" and code == 0
    assert (check["ci_low"], check["ci_high"]) == (
        d["delta.latency_ratio_ci_low"],
        d["delta.latency_ratio_ci_high"],
    )
    # the report keeps the medians of each model beside the paired ratio
    assert report["student"]["metrics"]["latency_ms"] > 0


@pytest.mark.slow
def test_too_few_repeats_for_an_interval_warn_when_latency_is_gated(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ci_compress.evaluation.performance as performance

    monkeypatch.setattr(performance, "TIME_BUDGET_MS", 0.0)  # a slow model: no extra turns
    _, report, _ = gate(
        workdir,
        base_config(thresholds={"max_latency_ratio": 100.0}, runtime={"latency_repeats": 3}),
    )
    assert [w for w in report["warnings"] if "runtime.latency_repeats is 3" in w]
