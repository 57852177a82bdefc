"""The trend across builds (issue 17, item 9): the PR comment, job summary and MR note
show this candidate against the last promoted versions from the registry, and the run
logs a PNG chart. The registry read is a Tracker method (promoted_history), implemented
for MLflow and in memory; the end-to-end test promotes versions on a real MLflow server
and then runs the GitHub Action on a pull request."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from ci_compress.report import Report, report_from_dict
from ci_compress.reporting.render import markdown
from ci_compress.reporting.trend import build_trend, markdown_section, write_chart
from ci_compress.tracking import MemoryTracker
from tests.e2e.test_wrapper_github import api, gate, github_env
from tests.helpers.cli import run_cli
from tests.helpers.configs import base_config, write_config
from tests.helpers.servers import MlflowServer


def _memory_registry() -> MemoryTracker:
    t = MemoryTracker()
    for i, (acc, size, promo) in enumerate(
        [(0.97, 40_000, "default-branch"), (0.965, 38_000, "pull-request"),
         (0.962, 36_000, "default-branch"), (0.958, 35_000, "promote-flag")]
    ):  # fmt: skip
        t.start_run("e", f"r{i}", {})
        t.log_metrics(
            {"student.accuracy": acc, "student.file_bytes": size, "student.latency_ms": 0.1}
        )
        t.register("m", "student", {"ci_compress.promotion": promo})
    t.set_alias("m", "champion", "4")
    return t


def _report(acc: float, size: int) -> Report:
    student = {
        "file": "s.ccz",
        "file_bytes": size,
        "sha256": "0" * 64,
        "metrics": {"accuracy": acc, "file_bytes": size, "latency_ms": 0.12},
    }
    return report_from_dict(
        {
            "verdict": "pass",
            "gate": {"passed": True, "checks": []},
            "teacher": student,
            "student": student,
            "deltas": {"delta.accuracy_drop_points": 1.0, "delta.compression_ratio": 5.0},
            "thresholds": {},
            "holdout": {"name": "h", "samples": 1, "sha256": "0" * 64},
        }
    )


def test_memory_tracker_reads_promoted_versions_oldest_first() -> None:
    t = _memory_registry()
    history = t.promoted_history("m", "champion", 5)
    assert [h.version for h in history] == ["1", "3", "4"]  # v2 was a PR candidate
    assert [h.current for h in history] == [False, False, True]
    assert history[0].metrics["student.accuracy"] == 0.97
    assert [h.version for h in t.promoted_history("m", "champion", 2)] == ["3", "4"]
    assert t.promoted_history("unknown", "champion", 5) == []


def test_trend_table_and_chart(tmp_path: Path) -> None:
    t = _memory_registry()
    rep = _report(0.955, 34_000)
    rep = replace(
        rep,
        trend=build_trend(
            t.promoted_history("m", "champion", 5), rep, registered_model="m", alias="champion"
        ),
    )
    assert rep.trend is not None
    lines = "\n".join(markdown_section(rep.trend))
    assert "| v4 `@champion` | 95.80% | 35,000 | 0.100 |" in lines
    assert "| **candidate** | **95.50%** | **34,000** | **0.120** |" in lines
    assert "Drift since v1: accuracy -1.50 points, shipped file -15.0%, latency +20.0%." in lines
    assert "**Trend**" in markdown(rep)
    again = report_from_dict(json.loads(json.dumps(rep.to_dict())))  # report.json round trip
    assert again.trend == rep.trend
    png = write_chart(rep.trend, tmp_path / "trend.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    empty = build_trend([], rep, registered_model="m", alias="champion")
    assert "no promoted version of `m` yet" in "\n".join(markdown_section(empty))


@pytest.mark.slow
def test_pr_comment_and_summary_show_the_trend_from_a_real_registry(
    workdir: Path, tmp_path: Path, mlflow_server: MlflowServer
) -> None:
    name = f"trend-{uuid.uuid4().hex[:8]}"
    cfg = base_config(
        thresholds={"max_accuracy_drop": 5.0},
        mlflow={
            "enabled": True,
            "tracking_uri": mlflow_server.uri,
            "experiment": name,
            "registered_model": name,
        },
    )
    write_config(workdir, cfg)
    main_branch = {
        "GITHUB_ACTIONS": "true",
        "GITHUB_REF": "refs/heads/main",
        "GITHUB_REF_NAME": "main",
        "GITHUB_SHA": "1" * 40,
    }
    for _ in range(2):  # two merges to main: two promoted versions
        proc = run_cli("run", "--config", "compress.yaml", "--quiet", cwd=workdir, env=main_branch)
        assert proc.returncode == 0, proc.stderr
    with api() as (url, state):
        res = gate(workdir, tmp_path, github_env(tmp_path, url))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    (comment,) = state.comments[7]
    for text in (comment["body"], res.summary):
        assert f"against the last 2 promoted version(s) of `{name}`" in text
        assert "| v1 |" in text and "| v2 `@champion` |" in text and "| **candidate** |" in text
    report = json.loads(Path(res.outputs["report-path"]).read_text())
    assert [r["version"] for r in report["trend"]["rows"]] == ["1", "2"]
    assert (
        report["registry"]["version"] == "3" and report["registry"]["promotion"] == "pull-request"
    )

    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server.uri)
    artifacts = {a.path for a in client.list_artifacts(report["mlflow"]["run_id"])}
    assert "trend.png" in artifacts
