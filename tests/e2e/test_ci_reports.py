"""JUnit, report.json round trip, the outcome table, GitLab and Jenkins renderers, and the
fast-check options of `ci-compress run`: real gates, real files, the real CLI."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.helpers import REPO
from tests.helpers.action_harness import parse_output_file
from tests.helpers.cli import run_cli
from tests.helpers.configs import base_config, write_config
from tests.helpers.fake_apis import fake_api
from tests.helpers.servers import free_port

FAILING = {"max_accuracy_drop": 50.0, "min_compression_ratio": 1000.0, "max_size_bytes": 10}


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory, demo_dir: Path) -> dict[str, Path]:
    """report folders of one passing and one failing real gate."""
    out = {}
    for name, thresholds in (("pass", {"max_accuracy_drop": 5.0}), ("fail", FAILING)):
        d = tmp_path_factory.mktemp(f"gate-{name}")
        shutil.copy(demo_dir / "digits_mlp.safetensors", d / "digits_mlp.safetensors")
        cfg = write_config(d, base_config(thresholds=thresholds))
        proc = run_cli("run", "--config", str(cfg), "--quiet", cwd=d)
        assert proc.returncode == (0 if name == "pass" else 1), proc.stderr
        out[name] = d / "report"
    return out


def test_junit_has_one_case_per_threshold_and_counts_failures(reports: dict[str, Path]) -> None:
    rep = json.loads((reports["fail"] / "report.json").read_text())
    root = ET.parse(reports["fail"] / "junit.xml").getroot()
    suite = root.find("testsuite")
    assert suite is not None
    cases = suite.findall("testcase")
    assert sorted(c.get("name") for c in cases) == sorted(FAILING)
    failed = {c.get("name"): c.find("failure") for c in cases if c.find("failure") is not None}
    assert set(failed) == {"min_compression_ratio", "max_size_bytes"}
    assert root.get("failures") == suite.get("failures") == "2" and suite.get("tests") == "3"
    by_name = {c["threshold"]: c for c in rep["gate"]["checks"]}
    for name, failure in failed.items():
        assert failure is not None
        msg = failure.get("message", "")
        assert f"limit {by_name[name]['limit']:.6g}" in msg
        assert f"measured {by_name[name]['measured']:.6g}" in msg
    ok = ET.parse(reports["pass"] / "junit.xml").getroot()
    assert ok.get("failures") == "0" and ok.get("tests") == "1"
    props = {p.get("name"): p.get("value") for p in ok.iter("property")}
    assert props["verdict"] == "pass"


def test_report_json_round_trips(reports: dict[str, Path]) -> None:
    from ci_compress.report import report_from_dict

    data = json.loads((reports["fail"] / "report.json").read_text())
    again = json.loads(json.dumps(report_from_dict(data).to_dict()))
    assert again == data


def test_outcome_table() -> None:
    from ci_compress.ci.common import exit_code

    table = {
        ("pass", "fail"): 0, ("pass", "warn"): 0, ("pass", "never"): 0,
        ("warn", "fail"): 0, ("warn", "warn"): 6, ("warn", "never"): 0,
        ("fail", "fail"): 1, ("fail", "warn"): 1, ("fail", "never"): 0,
    }  # fmt: skip
    for (st, fail_on), code in table.items():
        assert exit_code(st, fail_on) == code, (st, fail_on)  # type: ignore[arg-type]


def test_an_inconclusive_gate_keeps_exit_5_through_every_renderer(
    demo_dir: Path, tmp_path: Path
) -> None:
    """A real inconclusive gate (the README's worked example: prune 80%, confident rule,
    limit 1.5): 540 samples cannot tell, which is not the same as shown worse (exit 1)."""
    shutil.copy(demo_dir / "digits_mlp.safetensors", tmp_path / "digits_mlp.safetensors")
    cfg = write_config(
        tmp_path,
        base_config(
            passes=[{"type": "prune", "amount": 0.8}, {"type": "quantize"}],
            thresholds={"max_accuracy_drop": 1.5, "decision": "confident"},
        ),
    )
    proc = run_cli("run", "--config", str(cfg), "--quiet", cwd=tmp_path)
    assert proc.returncode == 5, proc.stderr
    rep = str(tmp_path / "report" / "report.json")
    env = {"GITHUB_STEP_SUMMARY": str(tmp_path / "summary.md")}
    for args in (
        ["jenkins"],
        ["gitlab", "--no-note"],
        ["github", "--no-comment"],
    ):
        for fail_on, code in (("fail", 5), ("warn", 5), ("never", 0)):
            proc = run_cli(
                "report", *args, "--report", rep, "--fail-on", fail_on, cwd=tmp_path, env=env
            )
            assert proc.returncode == code, (args, fail_on, proc.stdout, proc.stderr)
            assert f"(fail-on: {fail_on}, exit {code})" in proc.stdout
            assert "ci-compress: the gate was inconclusive" in proc.stdout, proc.stdout
            assert "the gate failed" not in proc.stdout


def test_report_jenkins_exit_codes_and_description(
    reports: dict[str, Path], tmp_path: Path
) -> None:
    desc = tmp_path / "desc.txt"
    proc = run_cli(
        "report", "jenkins", "--report", str(reports["fail"] / "report.json"),
        "--description-file", str(desc), cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 1
    assert desc.read_text().startswith("ci-compress gate FAILED")
    assert proc.stdout.count("ci-compress: FAILED") == 2
    proc = run_cli(
        "report", "jenkins", "--report", str(reports["pass"] / "report.json"), cwd=tmp_path
    )
    assert proc.returncode == 0
    proc = run_cli("report", "jenkins", "--report", str(tmp_path / "nope.json"), cwd=tmp_path)
    assert proc.returncode == 3 and proc.stderr.startswith("Error: report not found:")
    assert "Traceback" not in proc.stderr


def test_report_gitlab_dotenv_and_mr_note_create_then_update(
    reports: dict[str, Path], tmp_path: Path
) -> None:
    with fake_api() as (api, state):
        state.notes[("123", "5")] = [
            {"id": 1, "body": "first!", "author": {"id": 7}, "system": False},
            {
                "id": 2,
                "body": "<!-- ci-compress:report key=default --> quoted",
                "author": {"id": 7},
                "system": False,
            },
            {"id": 3, "body": "added 1 commit", "author": {"id": 42}, "system": True},
        ]
        env = {
            "GITLAB_CI": "true",
            "CI_API_V4_URL": f"{api}/api/v4",
            "CI_PROJECT_ID": "123",
            "CI_MERGE_REQUEST_IID": "5",
            "CI_JOB_URL": "https://gitlab.example/acme/models/-/jobs/9",
            "CI_COMPRESS_GITLAB_TOKEN": "glpat-secret",
        }
        dotenv = tmp_path / "ci-compress.env"
        args = ["report", "gitlab", "--dotenv", str(dotenv)]
        first = run_cli(
            *args, "--report", str(reports["pass"] / "report.json"), cwd=tmp_path, env=env
        )
        assert first.returncode == 0, first.stderr
        ours = [n for n in state.notes[("123", "5")] if n["author"]["id"] == 42 and not n["system"]]
        assert len(ours) == 1 and "✅" in ours[0]["body"] and "jobs/9" in ours[0]["body"]
        assert (
            "created MR note" in first.stdout and "glpat-secret" not in first.stdout + first.stderr
        )
        values = dict(line.split("=", 1) for line in dotenv.read_text().splitlines())
        assert values["CI_COMPRESS_PASSED"] == "true" and values["CI_COMPRESS_STATE"] == "pass"
        rep = json.loads((reports["pass"] / "report.json").read_text())
        assert float(values["CI_COMPRESS_COMPRESSION_RATIO"]) == pytest.approx(
            rep["deltas"]["delta.compression_ratio"], abs=1e-4
        )

        second = run_cli(
            *args, "--report", str(reports["fail"] / "report.json"), cwd=tmp_path, env=env
        )
        assert second.returncode == 1
        ours2 = [
            n for n in state.notes[("123", "5")] if n["author"]["id"] == 42 and not n["system"]
        ]
        assert len(ours2) == 1 and ours2[0]["id"] == ours[0]["id"] and "❌" in ours2[0]["body"]
        assert state.notes[("123", "5")][1]["body"].endswith("quoted")  # another user's note
        assert (
            "PUT",
            f"/api/v4/projects/123/merge_requests/5/notes/{ours[0]['id']}",
        ) in state.requests
        assert dotenv.read_text().count("CI_COMPRESS_PASSED=false") == 1

        # no token: the gate result still decides the exit code; a note is explained, not faked
        env.pop("CI_COMPRESS_GITLAB_TOKEN")
        third = run_cli(
            *args, "--report", str(reports["pass"] / "report.json"), cwd=tmp_path, env=env
        )
        assert third.returncode == 0 and "CI_JOB_TOKEN cannot write notes" in third.stdout


@pytest.mark.slow
def test_fast_options_and_warn_state(workdir: Path) -> None:
    # MLflow enabled but unreachable, not required: the gate passes with a warning
    cfg = base_config(
        thresholds={"max_accuracy_drop": 10.0},
        mlflow={
            "enabled": True,
            "required": False,
            "tracking_uri": f"http://127.0.0.1:{free_port()}",
        },
    )
    path = write_config(workdir, cfg)
    proc = run_cli("run", "--config", str(path), "--holdout-limit", "50", "--quiet", cwd=workdir,
                   env={"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "2"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rep = json.loads((workdir / "report" / "report.json").read_text())
    assert rep["holdout"]["samples"] == 50 and rep["warnings"]
    report_json = str(workdir / "report" / "report.json")
    for fail_on, code in (("fail", 0), ("warn", 6), ("never", 0)):
        r = run_cli("report", "jenkins", "--report", report_json, "--fail-on", fail_on, cwd=workdir)
        assert r.returncode == code, (fail_on, r.stdout, r.stderr)
    # --fast: no MLflow at all (no warning, no run id), a holdout sample
    proc = run_cli("run", "--config", str(path), "--fast", "--quiet", cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    rep = json.loads((workdir / "report" / "report.json").read_text())
    assert rep["holdout"]["samples"] == 200 and rep["warnings"] == []
    assert rep["mlflow"]["run_id"] is None


def test_holdout_limit_must_be_positive(tmp_path: Path) -> None:
    proc = run_cli("run", "--holdout-limit", "0", cwd=tmp_path)
    assert proc.returncode == 2 and "--holdout-limit" in proc.stderr


def test_help_lists_the_new_commands() -> None:
    proc = run_cli("--help", cwd=REPO)
    assert (
        "init" in proc.stdout
        and "report" in proc.stdout
        and "6   passed with warnings" in proc.stdout
    )


def test_ci_outputs_of_a_regression_gate_name_its_metric(tmp_path: Path) -> None:
    """A gate on a task other than classification: the outputs carry the task's primary
    metric (name, teacher, student, change) instead of a NaN accuracy drop."""
    from tests.helpers.real_models import diabetes_regressor

    diabetes_regressor(tmp_path)
    config = {
        "version": 1,
        "model": {"path": "reg.safetensors", "factory": "regressors:regressor"},
        "data": {"holdout": {"path": "holdout.npz"}},
        "task": {"type": "regression"},
        "passes": [{"type": "prune", "amount": 0.5}, {"type": "quantize"}],
        "thresholds": {"metrics": {"mae": {"max_increase": 0.5}}},
        "runtime": {"latency_repeats": 5, "latency_warmup": 1},
        "mlflow": {"enabled": False},
        "report": {"dir": "report"},
    }
    cfg = write_config(tmp_path, config)
    proc = run_cli("run", "--config", str(cfg), "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report_json = tmp_path / "report" / "report.json"
    rep = json.loads(report_json.read_text())
    t, s = rep["teacher"]["metrics"]["mae"], rep["student"]["metrics"]["mae"]

    # GitLab: the dotenv
    dotenv = tmp_path / "ci-compress.env"
    proc = run_cli(
        "report", "gitlab", "--report", str(report_json), "--dotenv", str(dotenv),
        cwd=tmp_path, env={"GITLAB_CI": "true"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    values = dict(line.split("=", 1) for line in dotenv.read_text().splitlines())
    assert "nan" not in dotenv.read_text().lower()
    assert values["CI_COMPRESS_METRIC"] == "mae"
    assert values["CI_COMPRESS_METRIC_WORSE"] == "increase"
    assert float(values["CI_COMPRESS_METRIC_TEACHER"]) == pytest.approx(t, rel=1e-5)
    assert float(values["CI_COMPRESS_METRIC_STUDENT"]) == pytest.approx(s, rel=1e-5)
    assert float(values["CI_COMPRESS_METRIC_CHANGE"]) == pytest.approx(s - t, rel=1e-4)
    assert values["CI_COMPRESS_ACCURACY_DROP"] == ""

    # GitHub: the step outputs and the summary line
    gh_out, gh_summary = tmp_path / "gh-output", tmp_path / "gh-summary.md"
    proc = run_cli(
        "report", "github", "--report", str(report_json), "--no-comment",
        cwd=tmp_path,
        env={"GITHUB_ACTIONS": "true", "GITHUB_OUTPUT": str(gh_out),
             "GITHUB_STEP_SUMMARY": str(gh_summary)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = parse_output_file(gh_out.read_text())
    assert out["metric"] == "mae" and out["metric-worse"] == "increase"
    assert float(out["metric-change"]) == pytest.approx(s - t, rel=1e-4)
    assert out["accuracy-drop"] == "" and "nan" not in gh_out.read_text().lower()
    assert out["summary"].startswith(f"ci-compress gate PASSED: mae increase {s - t:+.4g}")

    # Jenkins: the build description
    desc = tmp_path / "desc.txt"
    proc = run_cli(
        "report", "jenkins", "--report", str(report_json), "--description-file", str(desc),
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0
    assert desc.read_text().startswith("ci-compress gate PASSED: mae increase")
