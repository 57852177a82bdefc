"""Every trigger that builds a pull/merge request is a PR build: it never promotes, and
its thresholds are held to the registry's policy. ``pull_request_target`` once read as a
default-branch build (its GITHUB_REF is the base branch) and would have promoted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ci_compress.ci.env import detect
from ci_compress.record import promotion_decision

GH = {
    "GITHUB_ACTIONS": "true",
    "GITHUB_REF": "refs/heads/main",
    "GITHUB_REF_NAME": "main",
    "GITHUB_SHA": "a" * 40,
    "GITHUB_REPOSITORY": "acme/models",
}


def _event(tmp_path: Path, payload: dict[str, Any]) -> str:
    path = tmp_path / "event.json"
    path.write_text(json.dumps(payload))
    return str(path)


@pytest.mark.parametrize(
    ("event", "payload", "number"),
    [
        ("pull_request_target", {"pull_request": {"number": 12}}, "12"),
        ("pull_request_target", None, None),  # no payload: still a PR build
        ("pull_request_review", {"pull_request": {"number": 3}}, "3"),
        ("pull_request_review_comment", {"pull_request": {"number": 4}}, "4"),
        ("issue_comment", {"issue": {"number": 9, "pull_request": {"url": "u"}}}, "9"),
        (
            "merge_group",
            {"merge_group": {"head_ref": "refs/heads/gh-readonly-queue/main/pr-21-abc"}},
            "21",
        ),
        (
            "workflow_run",
            {"workflow_run": {"event": "pull_request", "pull_requests": [{"number": 5}]}},
            "5",
        ),
        ("workflow_run", {"workflow_run": {"event": "pull_request", "pull_requests": []}}, None),
    ],
)
def test_github_pr_events_on_the_default_branch_ref_are_pr_builds(
    tmp_path: Path, event: str, payload: dict[str, Any] | None, number: str | None
) -> None:
    env = {**GH, "GITHUB_EVENT_NAME": event, "GITHUB_HEAD_REF": "feature"}
    if payload is not None:
        env["GITHUB_EVENT_PATH"] = _event(tmp_path, payload)
    ci = detect(env, tmp_path)
    assert ci.is_pull_request and not ci.on_default_branch
    assert ci.pr_number == number and ci.event == event
    assert promotion_decision(passed=True, ci=ci, promote=False, registered=True) == (
        False,
        "pull-request",
    )


@pytest.mark.parametrize(
    ("event", "payload"),
    [
        ("push", {}),
        ("issue_comment", {"issue": {"number": 9}}),  # a comment on an issue, not a PR
        ("workflow_run", {"workflow_run": {"event": "push"}}),
        ("workflow_dispatch", {}),
    ],
)
def test_github_default_branch_builds_still_promote(
    tmp_path: Path, event: str, payload: dict[str, Any]
) -> None:
    env = {**GH, "GITHUB_EVENT_NAME": event, "GITHUB_EVENT_PATH": _event(tmp_path, payload)}
    ci = detect(env, tmp_path)
    assert not ci.is_pull_request and ci.on_default_branch
    assert promotion_decision(passed=True, ci=ci, promote=False, registered=True) == (
        True,
        "default-branch",
    )


@pytest.mark.parametrize(
    ("env", "number", "branch"),
    [
        (
            {"CI_PIPELINE_SOURCE": "merge_request_event", "CI_MERGE_REQUEST_IID": "8"},
            "8",
            "main",
        ),
        ({"CI_PIPELINE_SOURCE": "merge_request_event"}, None, "main"),
        (
            {
                "CI_PIPELINE_SOURCE": "external_pull_request_event",
                "CI_EXTERNAL_PULL_REQUEST_IID": "31",
                "CI_EXTERNAL_PULL_REQUEST_SOURCE_BRANCH_NAME": "feature",
            },
            "31",
            "feature",
        ),
    ],
)
def test_gitlab_merge_request_pipelines_are_pr_builds(
    tmp_path: Path, env: dict[str, str], number: str | None, branch: str
) -> None:
    base = {"GITLAB_CI": "true", "CI_COMMIT_REF_NAME": "main", "CI_DEFAULT_BRANCH": "main"}
    ci = detect({**base, **env}, tmp_path)
    assert ci.is_pull_request and not ci.on_default_branch
    assert ci.pr_number == number and ci.branch == branch


@pytest.mark.parametrize(
    ("env", "number"),
    [
        ({"CHANGE_ID": "4", "CHANGE_BRANCH": "feature"}, "4"),
        ({"ghprbPullId": "6", "ghprbSourceBranch": "feature"}, "6"),
        ({"gitlabMergeRequestIid": "2", "gitlabSourceBranch": "feature"}, "2"),
    ],
)
def test_jenkins_change_and_plugin_pr_builds(
    tmp_path: Path, env: dict[str, str], number: str
) -> None:
    base = {"JENKINS_URL": "https://j/", "BRANCH_NAME": "main"}
    ci = detect({**base, **env}, tmp_path)
    assert ci.is_pull_request and ci.pr_number == number and ci.branch == "feature"
    assert not ci.on_default_branch
