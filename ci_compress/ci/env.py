"""What the CI environment (or the local git checkout) says about this run.

The only place that reads provider environment variables. Each provider's variables are
the documented ones: GitHub Actions (``GITHUB_*``, ``RUNNER_NAME``), GitLab CI (``CI_*``,
``CI_PIPELINE_URL``, ``CI_RUNNER_DESCRIPTION``), Jenkins (``JENKINS_URL``, ``BUILD_URL``,
``GIT_*``, ``CHANGE_ID``, ``NODE_NAME``; ``BUILD_USER_ID`` from the build-user-vars
plugin and ``RUN_DISPLAY_URL`` from Blue Ocean when present).

Credentials never enter a :class:`CIContext`: a URL's ``user:password@`` part is
stripped when the context is built (Jenkins's ``GIT_URL`` is the clone URL, which can
carry the job's token), so the run tags, the model-version tags and report.json that
record the context hold the address and nothing of the credential.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from ci_compress.redaction import strip_userinfo

# GitHub events that run for a pull request, whatever ref they check out: under
# pull_request_target, issue_comment and workflow_run GITHUB_REF is the default branch,
# yet the code under test (and its compress.yaml) may be the PR's.
GITHUB_PR_EVENTS = frozenset(
    {
        "pull_request",
        "pull_request_target",
        "pull_request_review",
        "pull_request_review_comment",
        "merge_group",
    }
)
# GitLab pipeline sources that build a merge request (merged results and merge trains
# are merge_request_event too); external_pull_request_event is a GitHub PR built by GitLab.
GITLAB_PR_SOURCES = frozenset({"merge_request_event", "external_pull_request_event"})


@dataclass(frozen=True)
class CIContext:
    provider: str  # github | gitlab | jenkins | local
    commit: str | None = None
    branch: str | None = None
    default_branch: str | None = None
    pr_number: str | None = None
    repository: str | None = None
    job_url: str | None = None
    actor: str | None = None
    pipeline_url: str | None = None
    runner: str | None = None
    # The provider's name for what triggered the build (GITHUB_EVENT_NAME,
    # CI_PIPELINE_SOURCE), when it says so.
    event: str | None = None
    # Built for a pull/merge request even when no number is known (a payload-less
    # pull_request_target, say).
    pull_request: bool = False

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, str) and "@" in value and "://" in value:
                object.__setattr__(self, f.name, strip_userinfo(value))

    @property
    def is_pull_request(self) -> bool:
        return self.pull_request or self.pr_number is not None

    @property
    def is_ci(self) -> bool:
        return self.provider != "local"

    @property
    def on_default_branch(self) -> bool:
        return (
            not self.is_pull_request
            and self.branch is not None
            and self.branch == self.default_branch
        )

    def tags(self) -> dict[str, str]:
        """MLflow tags: only the fields that are known."""
        names = {
            "provider": "ci.provider",
            "commit": "mlflow.source.git.commit",
            "branch": "mlflow.source.git.branch",
            "pr_number": "ci.pr_number",
            "repository": "ci.repository",
            "job_url": "ci.job_url",
            "actor": "ci.actor",
            "pipeline_url": "ci.pipeline_url",
            "runner": "ci.runner",
        }
        return {names[k]: str(v) for k, v in asdict(self).items() if k in names and v}


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    value = out.stdout.strip()
    return value if out.returncode == 0 and value else None


def detect(environ: Mapping[str, str], cwd: Path) -> CIContext:
    e = environ
    if e.get("GITHUB_ACTIONS") == "true":
        event_name = e.get("GITHUB_EVENT_NAME") or None
        pr, is_pr = _github_pull_request(e, event_name)
        server = e.get("GITHUB_SERVER_URL", "https://github.com")
        job = (
            f"{server}/{e['GITHUB_REPOSITORY']}/actions/runs/{e['GITHUB_RUN_ID']}"
            if e.get("GITHUB_REPOSITORY") and e.get("GITHUB_RUN_ID")
            else None
        )
        return CIContext(
            provider="github",
            commit=e.get("GITHUB_SHA"),
            branch=e.get("GITHUB_HEAD_REF") or e.get("GITHUB_REF_NAME"),
            default_branch=e.get("CI_COMPRESS_DEFAULT_BRANCH")
            or e.get("GITHUB_DEFAULT_BRANCH")
            or "main",
            pr_number=pr,
            repository=e.get("GITHUB_REPOSITORY"),
            job_url=job,
            actor=e.get("GITHUB_TRIGGERING_ACTOR") or e.get("GITHUB_ACTOR"),
            # The workflow run (GitHub has no per-job URL in the environment).
            pipeline_url=f"{job}/attempts/{e['GITHUB_RUN_ATTEMPT']}"
            if job and e.get("GITHUB_RUN_ATTEMPT")
            else job,
            runner=e.get("RUNNER_NAME"),
            event=event_name,
            pull_request=is_pr,
        )
    if e.get("GITLAB_CI") == "true":
        source = e.get("CI_PIPELINE_SOURCE") or None
        return CIContext(
            provider="gitlab",
            commit=e.get("CI_COMMIT_SHA"),
            branch=e.get("CI_MERGE_REQUEST_SOURCE_BRANCH_NAME")
            or e.get("CI_EXTERNAL_PULL_REQUEST_SOURCE_BRANCH_NAME")
            or e.get("CI_COMMIT_BRANCH")
            or e.get("CI_COMMIT_REF_NAME"),
            default_branch=e.get("CI_DEFAULT_BRANCH"),
            pr_number=e.get("CI_MERGE_REQUEST_IID") or e.get("CI_EXTERNAL_PULL_REQUEST_IID"),
            event=source,
            pull_request=source in GITLAB_PR_SOURCES,
            repository=e.get("CI_PROJECT_PATH"),
            job_url=e.get("CI_JOB_URL"),
            actor=e.get("GITLAB_USER_LOGIN"),
            pipeline_url=e.get("CI_PIPELINE_URL"),
            runner=e.get("CI_RUNNER_DESCRIPTION") or e.get("CI_RUNNER_ID"),
        )
    if e.get("JENKINS_URL"):
        # CHANGE_*: multibranch pipelines; ghprb*: the GitHub Pull Request Builder
        # plugin; gitlab*: the GitLab plugin's merge request builds.
        branch = (
            e.get("CHANGE_BRANCH")
            or e.get("ghprbSourceBranch")
            or e.get("gitlabSourceBranch")
            or e.get("BRANCH_NAME")
            or e.get("GIT_BRANCH")
        )
        return CIContext(
            provider="jenkins",
            commit=e.get("GIT_COMMIT"),
            branch=branch.removeprefix("origin/") if branch else None,
            default_branch=e.get("CI_COMPRESS_DEFAULT_BRANCH") or "main",
            pr_number=e.get("CHANGE_ID") or e.get("ghprbPullId") or e.get("gitlabMergeRequestIid"),
            repository=e.get("GIT_URL"),
            job_url=e.get("BUILD_URL"),
            actor=e.get("CHANGE_AUTHOR") or e.get("BUILD_USER_ID"),
            pipeline_url=e.get("RUN_DISPLAY_URL") or e.get("BUILD_URL"),
            runner=e.get("NODE_NAME"),
        )
    return CIContext(
        provider="local",
        commit=_git(["rev-parse", "HEAD"], cwd),
        branch=_git(["rev-parse", "--abbrev-ref", "HEAD"], cwd),
        default_branch=e.get("CI_COMPRESS_DEFAULT_BRANCH") or "main",
    )


def _github_pull_request(e: Mapping[str, str], event_name: str | None) -> tuple[str | None, bool]:
    """(PR number, built for a PR) from the ref and the event payload.

    ``pull_request`` checks out ``refs/pull/<n>/merge``; ``pull_request_target``, the
    review events, ``issue_comment`` on a PR, ``merge_group`` (the merge queue) and a
    ``workflow_run`` triggered by a PR run with the default branch's ref or a queue ref,
    so the payload names the PR. Any of them is a PR build: it never promotes, and its
    thresholds are held to the policy on the registry.
    """
    ref = e.get("GITHUB_REF", "")
    number = ref.split("/")[2] if ref.startswith("refs/pull/") else None
    payload = _event_payload(e.get("GITHUB_EVENT_PATH"))
    is_pr = number is not None or event_name in GITHUB_PR_EVENTS
    found: Any = None
    if event_name in GITHUB_PR_EVENTS:
        found = _get(payload, "pull_request", "number")
        queue = _get(payload, "merge_group", "head_ref") or ref
        m = re.search(r"/pr-(\d+)-", str(queue)) if event_name == "merge_group" else None
        found = found if found is not None else (m.group(1) if m else None)
    elif event_name == "issue_comment" and _get(payload, "issue", "pull_request") is not None:
        is_pr, found = True, _get(payload, "issue", "number")
    elif (
        event_name == "workflow_run" and _get(payload, "workflow_run", "event") in GITHUB_PR_EVENTS
    ):
        is_pr = True
        prs = _get(payload, "workflow_run", "pull_requests")
        if isinstance(prs, list) and prs:
            found = _get(prs[0], "number")
    if number is None and isinstance(found, int | str) and str(found).isdigit():
        number = str(found)
    return number, is_pr


def _event_payload(path: str | None) -> dict[str, Any]:
    """The webhook payload GitHub writes to ``$GITHUB_EVENT_PATH`` ({} when unreadable)."""
    if not path:
        return {}
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _get(data: Any, *keys: str) -> Any:
    for k in keys:
        data = data.get(k) if isinstance(data, dict) else None
    return data
