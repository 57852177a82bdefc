"""The GitHub Action as the runner runs it: action.yml's steps (pipelines/github/*.sh)
under a GitHub-like environment (GITHUB_OUTPUT, GITHUB_STEP_SUMMARY, GITHUB_EVENT_PATH,
GITHUB_API_URL at a local stand-in for the REST API), with the real CLI and a real gate;
and the workflow_run fork-comment example's own steps. Issue 17, items 1, 2, 3 and 5."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers.action_harness import ActionResult, run_action
from tests.helpers.configs import base_config, write_config
from tests.helpers.fake_apis import READ_ONLY, FakeState, _Handler
from tests.helpers.wrapper_tools import (
    REPO,
    SITE_PACKAGES,
    clean_env,
    copy_checkout,
    factory_package,
    fresh_venv,
    release_archive,
)

pytestmark = pytest.mark.slow
MARKER = "<!-- ci-compress:report key=default -->"
INCONCLUSIVE = {"max_accuracy_drop": 0.3, "decision": "confident"}  # drop 0.19, CI [0, 0.56]


class _Handler2(_Handler):
    """The fake API plus ``GET /repos/{o}/{r}/pulls?head=owner:branch`` (open PRs)."""

    def _github(self, method: str, path: str, q: dict[str, list[str]]) -> None:
        if method == "GET" and re.fullmatch(r"/repos/[^/]+/[^/]+/pulls", path):
            head = q.get("head", [""])[0]
            pulls = getattr(self.state, "pulls", [])
            found = [
                p
                for p in pulls
                if f"{p['head']['repo']['owner']['login']}:{p['head']['ref']}" == head
            ]
            return self._send(200, found)
        return super()._github(method, path, q)


@contextmanager
def api() -> Iterator[tuple[str, FakeState]]:
    state = FakeState()
    handler = type("Handler", (_Handler2,), {"state": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    handler.base = base
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield base, state
    finally:
        server.shutdown()
        server.server_close()


def github_env(
    tmp: Path, api_url: str, *, fork: bool | None = None, **extra: str
) -> dict[str, str]:
    pr: dict[str, Any] = {"number": 7}
    if fork is not None:
        pr["head"] = {
            "repo": {"fork": fork, "full_name": "someone/models" if fork else "acme/models"}
        }
    event = tmp / f"event-{len(list(tmp.glob('event-*')))}.json"
    event.write_text(json.dumps({"action": "synchronize", "number": 7, "pull_request": pr}))
    return clean_env(
        GITHUB_ACTIONS="true",
        GITHUB_EVENT_NAME="pull_request",
        GITHUB_EVENT_PATH=str(event),
        GITHUB_REF="refs/pull/7/merge",
        GITHUB_REPOSITORY="acme/models",
        GITHUB_RUN_ID="4242",
        GITHUB_SERVER_URL="https://github.example",
        GITHUB_API_URL=api_url,
        GITHUB_SHA="0123456789abcdef0123456789abcdef01234567",
        **extra,
    )


def gate(
    workdir: Path,
    tmp: Path,
    env: dict[str, str],
    token: str = "ghs_token",
    action_dir: Path = REPO,
    **with_: str,
) -> ActionResult:
    steps = tmp / f"steps-{len(list(tmp.glob('steps-*')))}"
    steps.mkdir()
    return run_action(
        action_dir,
        with_={"install": "false", "python-version": "", "config": "compress.yaml", **with_},
        env=env,
        workspace=workdir,
        tmp=steps,
        token=token,
    )


def lines(text: str, prefix: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(prefix)]


def test_inconclusive_gate_is_reported_like_a_result(workdir: Path, tmp_path: Path) -> None:
    """Exit 5 goes through the renderer: outputs, summary, PR comment; before the fix the
    step printed "could not run the gate ... 70 a bug" and set no outputs or comment."""
    write_config(workdir, base_config(thresholds=INCONCLUSIVE))
    with api() as (url, state):
        res = gate(workdir, tmp_path, github_env(tmp_path, url))
        assert res.returncode == 5, res.stdout + res.stderr
        out = res.outputs
        assert out["exit-code"] == "5" and out["state"] == "inconclusive"
        assert out["passed"] == "false" and out["report-path"].endswith("report/report.json")
        assert "ci-compress gate INCONCLUSIVE" in res.summary
        assert "could not run the gate" not in res.summary
        (comment,) = state.comments[7]
        assert comment["body"].startswith(MARKER) and "INCONCLUSIVE" in comment["body"]
        assert "ci-compress: the gate was inconclusive" in res.stdout

        # fail-on: never reports it and passes; annotations are warnings, not errors
        never = gate(workdir, tmp_path, github_env(tmp_path, url), **{"fail-on": "never"})
    assert never.returncode == 0, never.stdout + never.stderr
    assert never.outputs["state"] == "inconclusive" and never.outputs["exit-code"] == "5"
    assert lines(never.stdout, "::error") == []
    assert len(state.comments[7]) == 1  # the same comment, updated


def test_fail_on_never_shows_failed_thresholds_as_warnings(workdir: Path, tmp_path: Path) -> None:
    write_config(workdir, base_config(thresholds={"min_compression_ratio": 1000.0}))
    with api() as (url, _state):
        env = github_env(tmp_path, url)
        res = gate(workdir, tmp_path, env, **{"fail-on": "never", "comment-on-pr": "false"})
    assert res.returncode == 0 and res.outputs["state"] == "fail"
    assert lines(res.stdout, "::error") == []
    (warning,) = [w for w in lines(res.stdout, "::warning") if "min_compression_ratio" in w]
    assert "limit 1000" in warning and "file=compress.yaml" in warning


def test_absolute_report_dir_under_runner_temp(workdir: Path, tmp_path: Path) -> None:
    """Before the fix the report step read $(pwd)//abs/report.json and failed (exit 3)."""
    write_config(workdir, base_config(thresholds={"max_accuracy_drop": 5.0}))
    runner_temp = tmp_path / "runner-temp" / "ci-compress"
    with api() as (url, _state):
        res = gate(
            workdir,
            tmp_path,
            github_env(tmp_path, url),
            **{"report-dir": str(runner_temp), "comment-on-pr": "false"},
        )
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.outputs["report-path"] == str(runner_temp / "report.json")
    assert (runner_temp / "report.json").is_file() and not (workdir / "report").exists()
    assert res.outputs["state"] == "pass"


def test_403_is_a_fork_only_when_head_repo_fork_is_true(workdir: Path, tmp_path: Path) -> None:
    write_config(workdir, base_config(thresholds={"max_accuracy_drop": 5.0}))
    with api() as (url, state):
        same_repo = gate(workdir, tmp_path, github_env(tmp_path, url, fork=False), READ_ONLY)
        fork = gate(workdir, tmp_path, github_env(tmp_path, url, fork=True), READ_ONLY)
    assert same_repo.returncode == 0 and fork.returncode == 0
    assert state.comments.get(7, []) == []
    (warning,) = lines(same_repo.stdout, "::warning")
    assert "lacks pull-requests: write" in warning and "fork" not in warning
    assert lines(same_repo.stdout, "::notice") == []
    (notice,) = lines(fork.stdout, "::notice")
    assert "a pull request from a fork" in notice and "workflow_run" in notice
    assert lines(fork.stdout, "::warning") == [] and lines(fork.stdout, "::error") == []


def test_missing_install_is_a_tool_error_before_the_gate(workdir: Path, tmp_path: Path) -> None:
    """install: false and no ci-compress for `python`: exit 127 with its own message.
    Before the fix `python -m ci_compress` exited 1 and the step read "gate failed"."""
    write_config(workdir, base_config())
    bin_dir = fresh_venv(tmp_path / "bare")
    with api() as (url, state):
        env = github_env(tmp_path, url)
        env.update(PATH=f"{bin_dir}:{env['PATH']}", PYTHONPATH=SITE_PACKAGES)
        res = gate(workdir, tmp_path, env)
    assert res.returncode == 127, res.stdout + res.stderr
    assert res.outputs["exit-code"] == "127" and res.outputs["state"] == "error"
    assert res.outputs["passed"] == ""
    (error,) = lines(res.stdout, "::error")
    assert "ci-compress is not installed (exit 127)" in error
    assert "ci-compress is not installed" in res.summary
    assert not (workdir / "report").exists() and state.comments == {}


def test_install_step_installs_the_actions_own_checkout_and_pinned_cpu_torch(
    workdir: Path, tmp_path: Path
) -> None:
    """install: true with a fresh virtualenv as the runner's Python: torch==2.13.0 from the
    CPU index (already satisfied here, so no index is contacted), ci-compress from the
    action's checkout ($GITHUB_ACTION_PATH), extra-pip-args for the model factory."""
    action_dir = copy_checkout(tmp_path / "action")
    factory_package(workdir)
    cfg = base_config(thresholds={"max_accuracy_drop": 5.0})
    cfg["model"]["factory"] = "acme_models.models:build"
    write_config(workdir, cfg)
    bin_dir = fresh_venv(tmp_path / "runner-python")
    with api() as (url, _state):
        env = github_env(tmp_path, url)
        env.update(PATH=f"{bin_dir}:{env['PATH']}", PYTHONPATH=SITE_PACKAGES)
        res = gate(
            workdir,
            tmp_path,
            env,
            action_dir=action_dir,
            install="true",
            **{"extra-pip-args": "--no-deps --no-build-isolation -e .", "comment-on-pr": "false"},
        )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "Cache pip downloads" in res.skipped  # a uses: step, keyed on the pins
    assert "Requirement already satisfied: torch==2.13.0" in res.stdout
    assert "Successfully installed ci-compress-0.1.0" in res.stdout
    assert "acme-models" in res.stdout and res.outputs["state"] == "pass"
    installed = subprocess.run(
        [str(bin_dir / "python"), "-c", "import ci_compress; print(ci_compress.__file__)"],
        capture_output=True, text=True, env={"PYTHONPATH": SITE_PACKAGES}, check=True, cwd=tmp_path,
    )  # fmt: skip
    assert installed.stdout.startswith(str(tmp_path / "runner-python"))


def test_action_defaults_pin_torch_and_install_no_package_by_name() -> None:
    action = yaml.safe_load((REPO / "action.yml").read_text())
    inputs = action["inputs"]
    assert inputs["torch-spec"]["default"] == "torch==2.13.0"
    assert inputs["torch-index-url"]["default"] == "https://download.pytorch.org/whl/cpu"
    assert "ci-compress-version" not in inputs
    install = (REPO / "pipelines/github/install.sh").read_text()
    assert 'pip install "$GITHUB_ACTION_PATH"' in install
    assert not re.search(r"-m pip install\s+\"?ci-compress", install)
    (cache,) = [
        s for s in action["runs"]["steps"] if str(s.get("uses", "")).startswith("actions/cache@")
    ]
    assert (
        "inputs.torch-spec" in cache["with"]["key"] and "github.action_ref" in cache["with"]["key"]
    )
    assert "inconclusive" in action["outputs"]["state"]["description"]


# ---------------------------------------------------------------- the workflow_run example

EXAMPLE = REPO / "examples/github/model-gate-fork-comment.yml"
HOSTILE = (
    "see [here](https://evil.example/x) <img src=https://evil.example/p.png> @acme/admins `code`"
)


def test_workflow_run_example_comments_on_the_events_pr_from_report_data(
    workdir: Path, tmp_path: Path
) -> None:
    """The example's own steps, run as written (the install URL pointed at this checkout):
    the PR comes from the workflow_run event, not the fork's artifact, and every string
    in the fork's report.json is inert in the comment; the renderer needs no torch."""
    write_config(workdir, base_config(thresholds={"min_compression_ratio": 1000.0}))
    run = subprocess.run(
        [sys.executable, "-m", "ci_compress", "run"],
        cwd=workdir, env=clean_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 1, run.stderr

    # The artifact as a fork could forge it: a hostile report.md, a PR number, strings.
    artifact = tmp_path / "job" / "report"
    artifact.mkdir(parents=True)
    data = json.loads((workdir / "report" / "report.json").read_text())
    data["warnings"].append(HOSTILE)
    data["gate"]["checks"][0]["threshold"] = "min_compression_ratio` [x](https://evil.example)"
    data["holdout"]["name"] = "@everyone"
    data["mlflow"] = {"run_id": "r", "run_url": "https://evil.example/mlflow"}
    (artifact / "report.json").write_text(json.dumps(data))
    (artifact / "report.md").write_text("[click me](https://evil.example)")
    (artifact / "pr-number").write_text("1")

    head_sha = "f" * 40
    event = tmp_path / "workflow_run.json"
    event.write_text(
        json.dumps(
            {
                "action": "completed",
                "workflow_run": {
                    "id": 99,
                    "event": "pull_request",
                    "head_sha": head_sha,
                    "head_branch": "feature",
                    "head_repository": {"full_name": "forker/models", "owner": {"login": "forker"}},
                    "pull_requests": [],  # GitHub leaves it empty for fork PRs
                },
            }
        )
    )
    workflow = yaml.safe_load(EXAMPLE.read_text())
    steps = {s.get("name"): s for s in workflow["jobs"]["comment"]["steps"]}
    install_script = steps["Install the renderer (the pinned release, without torch)"]["run"]
    assert release_archive() in install_script  # the pinned release, not a bare name
    checkout = copy_checkout(tmp_path / "ci-compress-src")
    install_script = install_script.replace(release_archive(), str(checkout))
    comment_script = steps["Comment"]["run"]
    assert "pr-number" not in comment_script and "--pr-number" not in comment_script

    # A runner's Python with no torch at all: rendering must not need it.
    bin_dir = fresh_venv(tmp_path / "renderer")
    env = clean_env(path_first=bin_dir)
    env.pop("PYTHONPATH")
    inst = subprocess.run(
        ["bash", "-eo", "pipefail", "-c", install_script],
        cwd=tmp_path / "job", env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert inst.returncode == 0, inst.stdout[-2000:] + inst.stderr[-2000:]
    assert "torch" not in inst.stdout.lower().replace("without torch", "")

    with api() as (url, state):
        state.pulls = [  # type: ignore[attr-defined]
            {
                "number": 8,
                "head": {"sha": "0" * 40, "ref": "other", "repo": {"owner": {"login": "forker"}}},
            },
            {
                "number": 9,
                "head": {"sha": head_sha, "ref": "feature", "repo": {"owner": {"login": "forker"}}},
            },
        ]
        env.update(
            GITHUB_ACTIONS="true",
            GITHUB_EVENT_NAME="workflow_run",
            GITHUB_EVENT_PATH=str(event),
            GITHUB_REPOSITORY="acme/models",
            GITHUB_API_URL=url,
            GITHUB_TOKEN="ghs_write_token",
            GITHUB_RUN_ID="100",
            GITHUB_SERVER_URL="https://github.example",
        )
        res = subprocess.run(
            ["bash", "-eo", "pipefail", "-c", comment_script],
            cwd=tmp_path / "job", env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    assert set(state.comments) == {9}  # the event's PR; never the artifact's "1"
    (comment,) = state.comments[9]
    body = comment["body"]
    assert body.startswith(MARKER) and "FAILED" in body
    # no link, image or URL from the fork survives (ours, the run footer, is the only link)
    assert "https://evil" not in body and "<img" not in body and "evil.example/mlflow" not in body
    assert (
        body.count("](") == 1 and "](https://github.example/acme/models/actions/runs/100)" in body
    )
    assert "@acme" not in body and "@everyone" not in body  # mentions made inert
    assert "click me" not in body
    assert ("GET", "/repos/acme/models/pulls") in state.requests
    assert shutil.which("python", path=str(bin_dir)) is not None
