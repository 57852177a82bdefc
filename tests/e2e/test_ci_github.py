"""The GitHub Action for real: action.yml's steps run as the runner would, against a
local stand-in for the GitHub REST API, with the real CLI and a real gate."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO
from tests.helpers.action_harness import parse_output_file, run_action
from tests.helpers.configs import base_config, write_config
from tests.helpers.fake_apis import READ_ONLY, fake_api

MARKER = "<!-- ci-compress:report key=default -->"


def _github_env(tmp: Path, api: str, number: int = 7) -> dict[str, str]:
    event = tmp / "event.json"
    event.write_text(
        json.dumps(
            {
                "action": "synchronize",
                "number": number,
                # a fork PR: a 403 on the comment is then the read-only token (head.repo.fork)
                "pull_request": {"number": number, "head": {"repo": {"fork": True}}},
            }
        )
    )
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("GITHUB_", "GITLAB", "CI_", "JENKINS", "MLFLOW_", "INPUT_"))
    }
    env.update(
        {
            "PATH": str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", ""),
            "PYTHONPATH": str(REPO),
            "GITHUB_ACTIONS": "true",
            "GITHUB_EVENT_NAME": "pull_request",
            "GITHUB_EVENT_PATH": str(event),
            "GITHUB_REF": f"refs/pull/{number}/merge",
            "GITHUB_REPOSITORY": "acme/models",
            "GITHUB_RUN_ID": "4242",
            "GITHUB_SERVER_URL": "https://github.example",
            "GITHUB_API_URL": api,
            "GITHUB_SHA": "0123456789abcdef0123456789abcdef01234567",
        }
    )
    return env


def _gate(workdir: Path, tmp: Path, env: dict[str, str], token: str, **with_: str):  # type: ignore[no-untyped-def]
    steps = tmp / f"steps-{len(list(tmp.glob('steps-*')))}"
    steps.mkdir()
    return run_action(
        REPO,
        with_={"install": "false", "python-version": "", **with_},
        env=env,
        workspace=workdir,
        tmp=steps,
        token=token,
    )


def test_output_file_parser_reads_multiline_blocks() -> None:
    text = "a=1\nsummary<<ghadelimiter_x\nline one\nline two\nghadelimiter_x\nb=2\n"
    assert parse_output_file(text) == {"a": "1", "summary": "line one\nline two", "b": "2"}


@pytest.mark.slow
def test_action_comments_once_then_updates_in_place(workdir: Path, tmp_path: Path) -> None:
    cfg = base_config(thresholds={"max_accuracy_drop": 5.0, "min_compression_ratio": 2.0})
    write_config(workdir, cfg)
    with fake_api() as (api, state):
        # other people's comments, and one by a human that quotes our marker: never touched
        state.comments[7] = [
            {"id": 1, "body": "LGTM", "user": {"login": "alice"}},
            {"id": 2, "body": f"copied {MARKER}", "user": {"login": "bob"}},
            {"id": 3, "body": "nit", "user": {"login": "carol"}},
        ]
        env = _github_env(tmp_path, api)
        first = _gate(
            workdir, tmp_path, env, "ghs_token", config="compress.yaml", **{"report-dir": "out"}
        )
        assert first.returncode == 0, first.stdout + first.stderr
        assert first.skipped == ["Set up Python", "Cache pip downloads"]  # install: false
        ours = [c for c in state.comments[7] if c["user"]["login"] == "github-actions[bot]"]
        assert len(ours) == 1 and ours[0]["body"].startswith(MARKER)
        assert "✅" in ours[0]["body"] and "actions/runs/4242" in ours[0]["body"]
        first_id = ours[0]["id"]

        # outputs, through GITHUB_OUTPUT's multiline-safe blocks
        report = json.loads((workdir / "out" / "report.json").read_text())
        out = first.outputs
        assert out["passed"] == "true" and out["state"] == "pass" and out["exit-code"] == "0"
        assert float(out["accuracy-drop"]) == pytest.approx(
            report["deltas"]["delta.accuracy_drop_points"], abs=1e-4
        )
        assert float(out["compression-ratio"]) == pytest.approx(
            report["deltas"]["delta.compression_ratio"], abs=1e-4
        )
        assert out["report-path"] == str(workdir / "out" / "report.json")
        assert out["summary"].count("\n") == len(report["gate"]["checks"])
        assert "ci-compress gate PASSED" in first.summary  # job summary
        assert "::error" not in first.stdout

        # second run: thresholds tightened so the gate fails; the same comment is updated
        cfg["thresholds"] = {
            "max_accuracy_drop": 5.0,
            "min_compression_ratio": 1000.0,
            "max_size_bytes": 10,
        }
        write_config(workdir, cfg)
        second = _gate(
            workdir, tmp_path, env, "ghs_token", config="compress.yaml", **{"report-dir": "out"}
        )
        assert second.returncode == 1, second.stdout + second.stderr
        ours = [c for c in state.comments[7] if c["user"]["login"] == "github-actions[bot]"]
        assert len(ours) == 1 and ours[0]["id"] == first_id
        assert "❌" in ours[0]["body"] and "**FAIL**" in ours[0]["body"]
        assert len(state.comments[7]) == 4  # three others + ours
        assert state.comments[7][1]["body"] == f"copied {MARKER}"
        assert ("PATCH", f"/repos/acme/models/issues/comments/{first_id}") in state.requests
        errors = [line for line in second.stdout.splitlines() if line.startswith("::error")]
        assert len(errors) == 2
        assert any("min_compression_ratio" in e and "limit 1000" in e for e in errors)
        assert all("file=compress.yaml" in e for e in errors)
        assert second.outputs["passed"] == "false" and second.outputs["exit-code"] == "1"


@pytest.mark.slow
def test_read_only_token_degrades_to_the_summary(workdir: Path, tmp_path: Path) -> None:
    write_config(workdir, base_config())
    with fake_api() as (api, state):
        env = _github_env(tmp_path, api)
        res = _gate(workdir, tmp_path, env, READ_ONLY, config="compress.yaml")
    assert res.returncode == 0, res.stdout + res.stderr
    notices = [line for line in res.stdout.splitlines() if line.startswith("::notice")]
    assert len(notices) == 1 and "fork" in notices[0]
    assert "::error" not in res.stdout and "::warning" not in res.stdout
    assert "ci-compress gate PASSED" in res.summary
    assert state.comments.get(7, []) == []
    assert ("POST", "/repos/acme/models/issues/7/comments") in state.requests


@pytest.mark.slow
def test_fail_on_never_reports_but_passes_and_tool_errors_still_fail(
    workdir: Path, tmp_path: Path
) -> None:
    write_config(workdir, base_config(thresholds={"min_compression_ratio": 1000.0}))
    with fake_api() as (api, _state):
        env = _github_env(tmp_path, api)
        res = _gate(
            workdir,
            tmp_path,
            env,
            "t",
            config="compress.yaml",
            **{"fail-on": "never", "comment-on-pr": "false"},
        )
        assert res.returncode == 0 and res.outputs["passed"] == "false"
        # fail-on: never: the failed threshold is a warning, the step does not fail
        assert sum(line.startswith("::warning") for line in res.stdout.splitlines()) == 1
        assert not any(line.startswith("::error") for line in res.stdout.splitlines())
        bad = _gate(workdir, tmp_path, env, "t", config="missing.yaml", **{"fail-on": "never"})
    assert bad.returncode == 2
    assert (
        "::error title=ci-compress%3A config or usage error (exit 2)::Error: config file not found:"
        in bad.stdout
    )
    assert bad.outputs["exit-code"] == "2" and bad.outputs["passed"] == ""
    assert "ci-compress could not run the gate (exit 2)" in bad.summary


def test_annotations_are_capped_at_ten_and_escaped() -> None:
    from ci_compress.ci.github import annotation_lines, command
    from ci_compress.gate import Check, GateResult
    from ci_compress.report import ModelSummary, Report

    checks = tuple(
        Check(f"t{i}", "delta.x", 1.0, 2.0, False, f"t{i}: 100% bad\nreally") for i in range(13)
    )
    m = ModelSummary("teacher", "a", 1, "0", {})
    rep = Report("fail", GateResult(False, checks), m, m, {}, {}, [], {}, {}, {}, warnings=["w"])
    lines = annotation_lines(rep)
    errors = [x for x in lines if x.startswith("::error")]
    assert len(errors) == 10 and "4 more thresholds failed" in errors[-1]
    assert "100%25 bad%0Areally" in errors[0]
    assert lines[-1].startswith("::warning")
    assert command("notice", "a", title="x: y, z") == "::notice title=x%3A y%2C z::a"
