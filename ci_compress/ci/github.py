"""GitHub Actions: job summary, step outputs, annotations and one sticky PR comment.

Renders a :class:`~ci_compress.report.Report` into GitHub's own channels and decides
nothing (the gate did). Every sink is passed in (``environ`` holds ``GITHUB_OUTPUT``,
``GITHUB_STEP_SUMMARY``, ``GITHUB_EVENT_PATH``, ``GITHUB_API_URL``...), so tests point
them at temporary files and a local HTTP server.

* ``$GITHUB_STEP_SUMMARY``: the Markdown report (GitHub shows up to 1 MiB per step).
* ``$GITHUB_OUTPUT``: ``name<<delimiter`` blocks, safe for values with newlines.
* ``::error``/``::warning`` workflow commands: one per failed threshold / warning,
  at most 10 each (GitHub shows no more per step).
* One PR comment, found by a hidden marker among the token's own comments and updated
  in place. A 403 degrades to the summary: a ``::notice::`` for a pull request from a
  fork (``pull_request.head.repo.fork`` in the event: its token is read-only), a
  ``::warning::`` naming the missing ``pull-requests: write`` permission otherwise.
* Under a ``workflow_run`` event (the comment job for fork PRs) the PR number comes from
  the event (its ``pull_requests`` array, or the open PR whose head is the run's
  ``head_sha``), never from the artifact, and the report is rendered from its data with
  every string escaped (:func:`~ci_compress.ci.common.untrusted_report_data`).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ci_compress.ci.common import (
    Echo,
    conclude,
    describe_http_error,
    marker,
    note_body,
    outputs,
)
from ci_compress.report import Report
from ci_compress.reporting.render import markdown, verdict_line

MAX_ANNOTATIONS = 10
MAX_SUMMARY_BYTES = 1024 * 1024
MAX_COMMENT_CHARS = 65_536
GITHUB_ACTIONS_BOT = "github-actions[bot]"
READ_ONLY_MESSAGE = "Resource not accessible by integration"


# ---------------------------------------------------------------- workflow commands


def escape_data(s: str) -> str:
    """Escape a workflow command's message (as @actions/core does)."""
    return s.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(s: str) -> str:
    """Escape a workflow command's property value (title=, file=)."""
    return escape_data(s).replace(":", "%3A").replace(",", "%2C")


def command(name: str, message: str, **props: str) -> str:
    """``::name prop=value,...::message``."""
    p = ",".join(f"{k}={escape_property(v)}" for k, v in props.items() if v)
    return f"::{name}{' ' + p if p else ''}::{escape_data(message)}"


def annotation_lines(
    report: Report, *, config_file: str | None = None, level: str = "error"
) -> list[str]:
    """``::error`` per failed threshold and ``::warning`` per warning, at most 10 each.

    ``level="warning"`` (``fail-on: never``: the step will not fail) shows the failed
    thresholds as warnings, so the run is not marked with errors it did not fail on.
    """
    lines: list[str] = []
    failed = report.gate.failures
    file_prop = {"file": config_file} if config_file else {}
    for c in failed[:MAX_ANNOTATIONS]:
        lines.append(
            command(
                level,
                f"{c.message} (measured {c.measured:.6g}, limit {c.limit:.6g})",
                title=f"ci-compress: {c.threshold}",
                **file_prop,
            )
        )
    if len(failed) > MAX_ANNOTATIONS:
        lines[-1] = command(
            level,
            f"{len(failed) - MAX_ANNOTATIONS + 1} more thresholds failed; see the job summary",
            title="ci-compress",
        )
    warns = report.warnings
    for w in warns[:MAX_ANNOTATIONS]:
        lines.append(command("warning", w, title="ci-compress"))
    return lines


# ---------------------------------------------------------------- files


def write_outputs(path: Path, values: Mapping[str, str]) -> None:
    """Append ``name<<delimiter`` blocks to ``$GITHUB_OUTPUT`` (multiline-safe)."""
    with path.open("a", encoding="utf-8") as f:
        for name, value in values.items():
            delim = f"ghadelimiter_{uuid.uuid4()}"
            while delim in value:  # pragma: no cover - a uuid inside a value
                delim = f"ghadelimiter_{uuid.uuid4()}"
            f.write(f"{name}<<{delim}\n{value}\n{delim}\n")


def append_summary(path: Path, markdown: str) -> None:
    """Append the report to ``$GITHUB_STEP_SUMMARY``, cut to GitHub's 1 MiB per step."""
    data = markdown.encode("utf-8")
    if len(data) > MAX_SUMMARY_BYTES:
        note = "\n\n… (truncated at 1 MiB: see report.md)\n".encode()
        data = data[: MAX_SUMMARY_BYTES - len(note)].decode("utf-8", "ignore").encode() + note
    with path.open("ab") as f:
        f.write(data)
        if not data.endswith(b"\n"):
            f.write(b"\n")


def event_payload(environ: Mapping[str, str]) -> dict[str, Any]:
    """The webhook payload at ``$GITHUB_EVENT_PATH`` ({} when absent or unreadable)."""
    event_path = environ.get("GITHUB_EVENT_PATH")
    if not event_path:
        return {}
    try:
        event = json.loads(Path(event_path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return event if isinstance(event, dict) else {}


def _get(data: Any, *keys: str) -> Any:
    for k in keys:
        data = data.get(k) if isinstance(data, dict) else None
    return data


def head_is_fork(environ: Mapping[str, str]) -> bool | None:
    """``pull_request.head.repo.fork`` from the event: True, False, or None when unknown."""
    fork = _get(event_payload(environ), "pull_request", "head", "repo", "fork")
    return fork if isinstance(fork, bool) else None


def is_workflow_run(environ: Mapping[str, str]) -> bool:
    return environ.get("GITHUB_EVENT_NAME") == "workflow_run"


def pull_request_number(environ: Mapping[str, str]) -> int | None:
    """The PR number from the event payload (pull_request / pull_request_target), or the ref."""
    event = event_payload(environ)
    number = _get(event, "pull_request", "number")
    if isinstance(number, int):
        return number
    ref = environ.get("GITHUB_REF", "")
    if ref.startswith("refs/pull/"):
        part = ref.split("/")[2]
        if part.isdigit():
            return int(part)
    return None


# ---------------------------------------------------------------- the REST API


class GitHubApiError(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text

    @property
    def read_only(self) -> bool:
        return self.status == 403 and READ_ONLY_MESSAGE.lower() in self.text.lower()


@dataclass
class GitHubClient:
    """The few issue-comment endpoints we need, through ``requests``."""

    api_url: str
    token: str
    timeout: float = 20.0

    def __post_init__(self) -> None:
        import requests

        self.api_url = self.api_url.rstrip("/")
        self.session = requests.Session()
        self.session.headers.update(
            {
                "Authorization": f"Bearer {self.token}",
                "Accept": "application/vnd.github+json",
                "X-GitHub-Api-Version": "2022-11-28",
                "User-Agent": "ci-compress",
            }
        )

    def _call(self, method: str, url: str, **kw: Any) -> Any:
        import requests

        try:
            resp = self.session.request(method, url, timeout=self.timeout, **kw)
        except requests.RequestException as e:
            raise GitHubApiError(0, f"{type(e).__name__}: {e}") from e
        if resp.status_code >= 400:
            raise GitHubApiError(resp.status_code, describe_http_error(resp))
        return resp

    def login(self) -> str | None:
        """The token's own login; None for installation tokens (GITHUB_TOKEN), which cannot read /user."""
        try:
            return str(self._call("GET", f"{self.api_url}/user").json()["login"])
        except (GitHubApiError, KeyError, ValueError):
            return None

    def list_comments(self, repo: str, number: int) -> list[dict[str, Any]]:
        url: str | None = f"{self.api_url}/repos/{repo}/issues/{number}/comments?per_page=100"
        out: list[dict[str, Any]] = []
        pages = 0
        while url and pages < 50:
            resp = self._call("GET", url)
            out.extend(resp.json())
            url = resp.links.get("next", {}).get("url")
            pages += 1
        return out

    def pulls_with_head(self, repo: str, head: str) -> list[dict[str, Any]]:
        """Open PRs whose head is ``owner:branch``."""
        url = f"{self.api_url}/repos/{repo}/pulls"
        params = {"state": "open", "head": head, "per_page": "100"}
        data = self._call("GET", url, params=params).json()
        return [p for p in data if isinstance(p, dict)] if isinstance(data, list) else []

    def create_comment(self, repo: str, number: int, body: str) -> dict[str, Any]:
        url = f"{self.api_url}/repos/{repo}/issues/{number}/comments"
        return dict(self._call("POST", url, json={"body": body}).json())

    def update_comment(self, repo: str, comment_id: int, body: str) -> dict[str, Any]:
        url = f"{self.api_url}/repos/{repo}/issues/comments/{comment_id}"
        return dict(self._call("PATCH", url, json={"body": body}).json())


def workflow_run_pull_request(
    event: Mapping[str, Any], client: GitHubClient, repo: str
) -> int | None:
    """The PR a ``workflow_run`` event's run belongs to, from the event, never the artifact.

    Same-repository PRs are in ``workflow_run.pull_requests``; for a fork the array is
    empty, so the open PR whose head is ``<head owner>:<head_branch>`` at the run's
    ``head_sha`` is looked up. Only a PR whose head commit is the run's commit counts.
    """
    run = event.get("workflow_run")
    if not isinstance(run, dict) or run.get("event") not in ("pull_request", None):
        return None
    sha = run.get("head_sha")
    for pr in run.get("pull_requests") or []:
        base = _get(pr, "base", "repo", "url")  # the array can list other repos' PRs
        if base and not str(base).endswith(f"/repos/{repo}"):
            continue
        if _get(pr, "head", "sha") == sha and isinstance(pr.get("number"), int):
            return int(pr["number"])
    owner = _get(run, "head_repository", "owner", "login")
    branch = run.get("head_branch")
    if not (sha and owner and branch):
        return None
    for pr in client.pulls_with_head(repo, f"{owner}:{branch}"):
        if _get(pr, "head", "sha") == sha and isinstance(pr.get("number"), int):
            return int(pr["number"])
    return None


def upsert_comment(
    client: GitHubClient, repo: str, number: int, body: str, *, key: str, author: str
) -> tuple[str, dict[str, Any]]:
    """Update our comment (marker + author) in place, or create it: never a duplicate."""
    mark = marker(key)
    for c in client.list_comments(repo, number):
        user = (c.get("user") or {}).get("login")
        if user == author and mark in str(c.get("body", "")):
            return "updated", client.update_comment(repo, int(c["id"]), body)
    return "created", client.create_comment(repo, number, body)


# ---------------------------------------------------------------- one call


def publish(
    report: Report,
    *,
    report_path: Path,
    environ: Mapping[str, str],
    fail_on: str = "fail",
    comment: bool = True,
    comment_key: str = "default",
    comment_author: str | None = None,
    config_file: str | None = None,
    pr_number: int | None = None,
    echo: Echo = print,
) -> int:
    """Render the report into GitHub's channels; return the step's exit code."""

    md = markdown(report)
    if environ.get("GITHUB_STEP_SUMMARY"):
        append_summary(Path(environ["GITHUB_STEP_SUMMARY"]), md)
    values = outputs(report, report_path)
    values["summary"] = "\n".join([verdict_line(report), *(c.message for c in report.gate.checks)])
    if environ.get("GITHUB_OUTPUT"):
        write_outputs(
            Path(environ["GITHUB_OUTPUT"]), {k.replace("_", "-"): v for k, v in values.items()}
        )
    level = "warning" if fail_on == "never" else "error"
    for line in annotation_lines(report, config_file=config_file, level=level):
        echo(line)

    if comment:
        _comment(md, environ, comment_key, comment_author, pr_number, echo)

    return conclude(report, fail_on, echo)


def _comment(
    md: str,
    environ: Mapping[str, str],
    key: str,
    author: str | None,
    pr_number: int | None,
    echo: Echo,
) -> None:
    token = environ.get("GITHUB_TOKEN") or environ.get("INPUT_GITHUB_TOKEN")
    repo = environ.get("GITHUB_REPOSITORY")
    number = pr_number or pull_request_number(environ)
    if number is None and not is_workflow_run(environ):
        echo(
            "ci-compress: not a pull request event; no PR comment (the job summary has the report)"
        )
        return
    if not token or not repo:
        echo(
            command(
                "notice",
                "no GitHub token or repository: the report is in the job summary only",
                title="ci-compress",
            )
        )
        return
    client = GitHubClient(environ.get("GITHUB_API_URL") or "https://api.github.com", token)
    if number is None:
        try:
            number = workflow_run_pull_request(event_payload(environ), client, repo)
        except GitHubApiError as e:
            echo(command("warning", f"could not find the run's PR ({e.text})", title="ci-compress"))
            return
        if number is None:
            echo("ci-compress: the workflow_run event names no open pull request; no PR comment")
            return
    run_url = None
    if environ.get("GITHUB_RUN_ID"):
        server = environ.get("GITHUB_SERVER_URL", "https://github.com")
        run_url = f"{server}/{repo}/actions/runs/{environ['GITHUB_RUN_ID']}"
    footer = (
        f"<sub>ci-compress · [workflow run]({run_url})</sub>"
        if run_url
        else "<sub>ci-compress</sub>"
    )
    body = note_body(md, key, MAX_COMMENT_CHARS, footer=footer)
    try:
        who = author or client.login() or GITHUB_ACTIONS_BOT
        action, data = upsert_comment(client, repo, number, body, key=key, author=who)
    except GitHubApiError as e:
        if e.status == 403 and head_is_fork(environ):
            echo(
                command(
                    "notice",
                    "the token is read-only here (a pull request from a fork): the report is in the "
                    "job summary; see docs/ci/github.md, the workflow_run pattern, to comment on fork PRs",
                    title="ci-compress",
                )
            )
        elif e.status == 403:
            echo(
                command(
                    "warning",
                    f"could not post the PR comment ({e.text}): the token lacks "
                    "pull-requests: write; add `permissions: pull-requests: write` to the job "
                    "(or comment-on-pr: false). The report is in the job summary",
                    title="ci-compress",
                )
            )
        else:
            echo(
                command(
                    "warning",
                    f"could not post the PR comment ({e.text}); the report is in the job summary",
                    title="ci-compress",
                )
            )
        return
    echo(f"ci-compress: {action} PR comment {data.get('html_url') or data.get('id')}")
