"""A PR cannot loosen the gate that judges it: a PR build is held, threshold by
threshold, to the stricter of its own config and the policy recorded on the registry by
the default branch's last promotion (the champion's ``ci_compress.thresholds`` tag)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ci_compress import pipeline, record
from ci_compress.ci.env import CIContext
from ci_compress.config import load_config
from ci_compress.errors import InputError
from ci_compress.gate import Tightened, stricter
from ci_compress.report import Report
from ci_compress.reporting.render import markdown, terminal
from ci_compress.tracking import MemoryTracker, ModelVersionRef
from tests.helpers.configs import base_config, write_config

GH_MAIN = {
    "GITHUB_ACTIONS": "true",
    "GITHUB_REF": "refs/heads/main",
    "GITHUB_REF_NAME": "main",
    "GITHUB_SHA": "a" * 40,
    "GITHUB_REPOSITORY": "acme/models",
}
GH_PR = {**GH_MAIN, "GITHUB_REF": "refs/pull/7/merge", "GITHUB_HEAD_REF": "feature"}


def test_stricter_keeps_added_checks_and_restores_loosened_or_dropped_ones() -> None:
    used, tightened = stricter(
        {"max_accuracy_drop": 5.0, "min_compression_ratio": 4.0, "max_size_bytes": 9e5},
        {
            "max_accuracy_drop": 1.0,  # looser in the PR: the policy's
            "min_compression_ratio": 2.0,  # stricter in the PR: the PR's
            "min_recovery": 0.99,  # dropped by the PR: the policy's
            "metrics.f1.max_drop": 0.02,
            "max_future_threshold": 1.0,  # a newer version's name: ignored
        },
    )
    assert used == {
        "max_accuracy_drop": 1.0,
        "min_compression_ratio": 4.0,
        "max_size_bytes": 9e5,
        "min_recovery": 0.99,
        "metrics.f1.max_drop": 0.02,
    }
    assert tightened == (
        Tightened("max_accuracy_drop", 5.0, 1.0, 1.0),
        Tightened("metrics.f1.max_drop", None, 0.02, 0.02),
        Tightened("min_recovery", None, 0.99, 0.99),
    )
    # a min_* the PR lowered is raised back
    assert stricter({"min_recovery": 0.9}, {"min_recovery": 0.99})[0] == {"min_recovery": 0.99}
    assert stricter({"max_accuracy_drop": 1.0}, {}) == ({"max_accuracy_drop": 1.0}, ())


def _champion(tags: dict[str, str]) -> record.Champion:
    v = ModelVersionRef("m", "3", "r", "runs:/r/student", "READY", ("champion",), tags)
    return record.Champion("m", "champion", v, None)


def test_the_policy_is_read_only_for_a_pr_build_from_the_champions_tag() -> None:
    tags = {
        "ci_compress.thresholds": '{"max_accuracy_drop": 1.0}',
        "ci_compress.promotion": "default-branch",
    }
    pr = CIContext(provider="github", pr_number="7")
    policy = record.pr_policy(_champion(tags), pr)
    assert policy is not None and policy.thresholds == {"max_accuracy_drop": 1.0}
    assert policy.source == "m@champion (version 3, promoted by default-branch)"
    main = CIContext(provider="github", branch="main", default_branch="main")
    assert record.pr_policy(_champion(tags), main) is None
    assert record.pr_policy(_champion({}), pr) is None  # a champion moved by hand
    assert record.pr_policy(None, pr) is None


@pytest.mark.parametrize("raw", ["not json", "[1, 2]", '{"max_accuracy_drop": "lots"}'])
def test_an_unreadable_policy_is_an_error_not_a_guess(raw: str) -> None:
    with pytest.raises(InputError) as e:
        record.pr_policy(
            _champion({"ci_compress.thresholds": raw}), CIContext("github", pr_number="7")
        )
    assert e.value.exit_code == 3 and "ci_compress.thresholds" in e.value.message


@pytest.mark.slow
def test_a_pr_that_loosens_its_thresholds_is_gated_on_the_policy_and_says_so(
    workdir: Path,
) -> None:
    t = MemoryTracker()
    mlflow = {"enabled": True, "registered_model": "m", "experiment": "e"}
    main_cfg = base_config(
        mlflow=mlflow, thresholds={"max_accuracy_drop": 1.5, "min_compression_ratio": 2.0}
    )
    first = pipeline.run(
        load_config(write_config(workdir, main_cfg)),
        tracker=t,
        environ=GH_MAIN,
        report_dir=workdir / "main",
    )
    assert first.registry is not None and first.registry.promoted
    assert first.gate.policy_source is None  # the default branch sets the policy
    assert "policy" not in first.gate.to_dict()

    # The PR raises one limit, drops another, and adds its own.
    pr_cfg = base_config(
        mlflow=mlflow, thresholds={"max_accuracy_drop": 50.0, "max_size_bytes": 10**9}
    )
    pr = pipeline.run(
        load_config(write_config(workdir, pr_cfg)),
        tracker=t,
        environ=GH_PR,
        report_dir=workdir / "pr",
    )
    limits = {c.threshold: c.limit for c in pr.gate.checks}
    assert limits == {
        "max_accuracy_drop": 1.5,
        "min_compression_ratio": 2.0,
        "max_size_bytes": 10**9,
    }
    assert dict(pr.thresholds) == limits  # what is recorded on the PR's version too
    data = json.loads((workdir / "pr" / "report.json").read_text())
    assert data["gate"]["policy"] == {
        "source": "m@champion (version 1, promoted by default-branch)",
        "loosened": [
            {"threshold": "max_accuracy_drop", "config": 50.0, "policy": 1.5, "used": 1.5},
            {"threshold": "min_compression_ratio", "config": None, "policy": 2.0, "used": 2.0},
        ],
    }
    assert Report.from_dict(data).gate.tightened == pr.gate.tightened  # round trip
    text = terminal(pr)
    assert (
        "policy: max_accuracy_drop: this build's config says 50, looser than the 1.5 recorded "
        "on m@champion (version 1, promoted by default-branch); the gate used 1.5" in text
    )
    assert "policy: min_compression_ratio: this build's config does not set it" in text
    md = markdown(pr)  # the PR comment and the MR note are this Markdown
    assert "| `max_accuracy_drop` | 50 | 1.5 | **1.5** |" in md
    assert "| `min_compression_ratio` | not set | 2 | **2** |" in md

    # A PR at least as strict as the policy is gated on its own thresholds.
    strict_cfg = base_config(
        mlflow=mlflow, thresholds={"max_accuracy_drop": 1.0, "min_compression_ratio": 3.0}
    )
    strict = pipeline.run(
        load_config(write_config(workdir, strict_cfg)),
        tracker=t,
        environ=GH_PR,
        report_dir=workdir / "strict",
    )
    assert {c.threshold: c.limit for c in strict.gate.checks} == {
        "max_accuracy_drop": 1.0,
        "min_compression_ratio": 3.0,
    }
    assert strict.gate.tightened == () and strict.gate.policy_source is not None
    assert "Policy: thresholds at least as strict as those recorded on m@champion" in markdown(
        strict
    )
