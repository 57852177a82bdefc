"""A wrapper test never goes silently missing from CI: .ci/run installs the platform
tools, and a test whose tool is missing fails when CI=true (skips, with the reason, only
on a developer's machine)."""

from __future__ import annotations

import pytest

from tests.helpers.wrapper_tools import GITLAB_CI_LOCAL_VERSION, REPO, require_tool


def test_missing_tool_fails_in_ci_and_skips_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true and groovy is not installed"):
        require_tool("groovy")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="apt-get install groovy"):
        require_tool("groovy")


def test_ci_run_installs_the_tools_itself() -> None:
    run = (REPO / ".ci/run").read_text()
    assert f"GITLAB_CI_LOCAL_VERSION={GITLAB_CI_LOCAL_VERSION}" in run
    assert 'npm install -g --no-audit --no-fund "gitlab-ci-local@$GITLAB_CI_LOCAL_VERSION"' in run
    for package in ("groovy", "default-jre-headless", "rsync", "dash", "git"):
        assert package in run
    assert "|| echo" not in run  # no install failure is waved through as a warning
    assert run.index("npm install -g") < run.index("\nmake test")


def test_workflow_run_pr_comes_from_the_event_for_this_repository() -> None:
    from ci_compress.ci.github import workflow_run_pull_request

    class NoLookups:
        def pulls_with_head(self, repo: str, head: str) -> list[dict[str, object]]:
            return []

    sha = "a" * 40
    event = {
        "workflow_run": {
            "event": "pull_request",
            "head_sha": sha,
            "pull_requests": [
                {
                    "number": 3,
                    "head": {"sha": sha},
                    "base": {"repo": {"url": "https://api/repos/other/x"}},
                },
                {
                    "number": 5,
                    "head": {"sha": "b" * 40},
                    "base": {"repo": {"url": "https://api/repos/acme/models"}},
                },
                {
                    "number": 6,
                    "head": {"sha": sha},
                    "base": {"repo": {"url": "https://api/repos/acme/models"}},
                },
            ],
        }
    }
    assert workflow_run_pull_request(event, NoLookups(), "acme/models") == 6  # type: ignore[arg-type]
    event["workflow_run"]["event"] = "push"
    assert workflow_run_pull_request(event, NoLookups(), "acme/models") is None  # type: ignore[arg-type]
