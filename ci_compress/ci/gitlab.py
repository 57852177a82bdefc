"""GitLab CI: dotenv outputs and one sticky merge-request note.

Renders a :class:`~ci_compress.report.Report`; decides nothing. The JUnit file
(``artifacts:reports:junit``) is written by ``ci-compress run`` itself.

* dotenv (``artifacts:reports:dotenv``): ``<PREFIX>NAME=value`` lines, one line each,
  so later jobs read the verdict and figures as variables. The prefix comes from the
  job's name (``ci-compress`` -> ``CI_COMPRESS_``, ``gate-int8`` -> ``GATE_INT8_``), so
  two gates in one pipeline do not overwrite each other's variables.
* One MR note through the REST API (``$CI_API_V4_URL``, ``$CI_PROJECT_ID``,
  ``$CI_MERGE_REQUEST_IID``), found by a hidden marker among the token's own notes and
  updated in place. ``CI_JOB_TOKEN`` cannot write notes: the token is a project (or
  group) access token with the ``api`` scope, in a masked CI/CD variable.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ci_compress.ci.common import (
    Echo,
    conclude,
    describe_http_error,
    echo_findings,
    marker,
    note_body,
    outputs,
)
from ci_compress.files import atomic_write
from ci_compress.report import Report
from ci_compress.reporting.render import markdown

MAX_NOTE_CHARS = 1_000_000
DEFAULT_TOKEN_VARIABLE = "CI_COMPRESS_GITLAB_TOKEN"


DEFAULT_DOTENV_PREFIX = "CI_COMPRESS_"


def dotenv_prefix(name: str) -> str:
    """A variable-name prefix from a job name: ``gate-int8`` -> ``GATE_INT8_``."""
    word = re.sub(r"[^A-Za-z0-9_]+", "_", name).strip("_").upper()
    if not word:
        return DEFAULT_DOTENV_PREFIX
    if word[0].isdigit():
        word = "_" + word
    return word + "_"


def dotenv_lines(values: Mapping[str, str], prefix: str = DEFAULT_DOTENV_PREFIX) -> list[str]:
    """``<PREFIX>NAME=value`` lines; newlines are not allowed in GitLab dotenv values."""
    out = []
    for name, value in values.items():
        key = prefix + re.sub(r"[^A-Za-z0-9_]", "_", name).upper()
        out.append(f"{key}={' '.join(value.splitlines())}")
    return out


def write_dotenv(
    path: Path, values: Mapping[str, str], prefix: str = DEFAULT_DOTENV_PREFIX
) -> None:
    atomic_write(path, "\n".join(dotenv_lines(values, prefix)) + "\n")


class GitLabApiError(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


@dataclass
class GitLabClient:
    """The merge-request notes endpoints, through ``requests``."""

    api_url: str  # $CI_API_V4_URL, e.g. https://gitlab.example.com/api/v4
    token: str
    timeout: float = 20.0

    def __post_init__(self) -> None:
        import requests

        self.api_url = self.api_url.rstrip("/")
        self.session = requests.Session()
        self.session.headers.update({"PRIVATE-TOKEN": self.token, "User-Agent": "ci-compress"})

    def _call(self, method: str, path: str, **kw: Any) -> Any:
        import requests

        try:
            resp = self.session.request(method, f"{self.api_url}{path}", timeout=self.timeout, **kw)
        except requests.RequestException as e:
            raise GitLabApiError(0, f"{type(e).__name__}: {e}") from e
        if resp.status_code >= 400:
            raise GitLabApiError(resp.status_code, describe_http_error(resp))
        return resp

    def user_id(self) -> int | None:
        try:
            return int(self._call("GET", "/user").json()["id"])
        except (GitLabApiError, KeyError, ValueError, TypeError):
            return None

    def _notes_path(self, project: str, iid: str) -> str:
        from urllib.parse import quote

        return f"/projects/{quote(project, safe='')}/merge_requests/{iid}/notes"

    def list_notes(self, project: str, iid: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        page = "1"
        for _ in range(50):
            resp = self._call(
                "GET", self._notes_path(project, iid), params={"per_page": 100, "page": page}
            )
            out.extend(resp.json())
            page = resp.headers.get("x-next-page", "")
            if not page:
                break
        return out

    def create_note(self, project: str, iid: str, body: str) -> dict[str, Any]:
        return dict(self._call("POST", self._notes_path(project, iid), json={"body": body}).json())

    def update_note(self, project: str, iid: str, note_id: int, body: str) -> dict[str, Any]:
        path = f"{self._notes_path(project, iid)}/{note_id}"
        return dict(self._call("PUT", path, json={"body": body}).json())


def upsert_note(
    client: GitLabClient, project: str, iid: str, body: str, *, key: str
) -> tuple[str, dict[str, Any]]:
    """Update our note (marker, and the token's own user when /user answers) or create it."""
    me = client.user_id()
    mark = marker(key)
    for n in client.list_notes(project, iid):
        if n.get("system"):
            continue
        author = (n.get("author") or {}).get("id")
        if mark in str(n.get("body", "")) and (me is None or author == me):
            return "updated", client.update_note(project, iid, int(n["id"]), body)
    return "created", client.create_note(project, iid, body)


def publish(
    report: Report,
    *,
    report_path: Path,
    environ: Mapping[str, str],
    fail_on: str = "fail",
    dotenv: Path | None = None,
    dotenv_prefix: str = DEFAULT_DOTENV_PREFIX,
    note: bool = True,
    note_key: str = "default",
    token_variable: str = DEFAULT_TOKEN_VARIABLE,
    echo: Echo = print,
) -> int:
    """Render the report into GitLab's channels; return the job's exit code."""

    if dotenv is not None:
        write_dotenv(dotenv, outputs(report, report_path), dotenv_prefix)
    echo_findings(report, echo)
    if note:
        _note(markdown(report), environ, note_key, token_variable, echo)
    return conclude(report, fail_on, echo)


def _note(md: str, environ: Mapping[str, str], key: str, token_variable: str, echo: Echo) -> None:
    iid = environ.get("CI_MERGE_REQUEST_IID")
    if not iid:
        echo("ci-compress: not a merge request pipeline; no MR note")
        return
    token = environ.get(token_variable)
    api = environ.get("CI_API_V4_URL")
    project = environ.get("CI_MERGE_REQUEST_PROJECT_ID") or environ.get("CI_PROJECT_ID")
    if not token:
        echo(
            f"ci-compress: no MR note: ${token_variable} is not set. CI_JOB_TOKEN cannot write "
            "notes: create a project access token (api scope, Reporter role) and store it as a "
            f"CI/CD variable named {token_variable} that is masked but NOT protected (protected "
            "variables are hidden from merge-request pipelines of unprotected branches)"
        )
        return
    if not api or not project:
        echo("ci-compress: no MR note: CI_API_V4_URL or CI_PROJECT_ID is not set")
        return
    footer = (
        f"<sub>ci-compress · [job]({environ['CI_JOB_URL']})</sub>"
        if environ.get("CI_JOB_URL")
        else ""
    )
    body = note_body(md, key, MAX_NOTE_CHARS, footer=footer)
    try:
        action, data = upsert_note(GitLabClient(api, token), project, iid, body, key=key)
    except GitLabApiError as e:
        echo(
            f"ci-compress: warning: could not write the MR note ({e.text}); the report is in the job artifacts"
        )
        return
    echo(f"ci-compress: {action} MR note {data.get('id')}")
