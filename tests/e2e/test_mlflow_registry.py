"""Registry, promotion, champion baseline and model URIs against the real MLflow server."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from tests.helpers.cli import run_cli
from tests.helpers.configs import base_config, write_config
from tests.helpers.servers import MlflowServer

pytestmark = pytest.mark.slow

FACTORY = "ci_compress.demo.models:digits_mlp"
GH_MAIN = {
    "GITHUB_ACTIONS": "true",
    "GITHUB_REF": "refs/heads/main",
    "GITHUB_REF_NAME": "main",
    "GITHUB_SHA": "a" * 40,
    "GITHUB_REPOSITORY": "acme/models",
    "GITHUB_RUN_ID": "101",
    "GITHUB_ACTOR": "alice",
    "RUNNER_NAME": "gh-runner-1",
}
GH_PR = {
    **GH_MAIN,
    "GITHUB_REF": "refs/pull/7/merge",
    "GITHUB_REF_NAME": "7/merge",
    "GITHUB_HEAD_REF": "feature",
    "GITHUB_SHA": "b" * 40,
}


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _cfg(uri: str, model: str, **over: Any) -> dict[str, Any]:
    mlflow = {"enabled": True, "tracking_uri": uri, "experiment": model, "registered_model": model}
    return base_config(mlflow=mlflow, **over)


def _run(
    workdir: Path, config: dict[str, Any], env: dict[str, str] | None = None, *args: str
) -> Any:
    path = write_config(workdir, config)
    proc = run_cli("run", "--config", str(path), *args, cwd=workdir, env=env)
    report_path = workdir / "report" / "report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else None
    if report_path.exists():
        report_path.unlink()
    return proc, report


def _alias(client: MlflowClient, name: str, alias: str = "champion") -> str | None:
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def test_default_branch_promotes_a_pr_build_never_does(
    workdir: Path, mlflow_server: MlflowServer
) -> None:
    client = MlflowClient(tracking_uri=mlflow_server.uri, registry_uri=mlflow_server.uri)
    name = _name("promo")
    cfg = _cfg(mlflow_server.uri, name, thresholds={"max_accuracy_drop": 5.0})

    proc, report = _run(workdir, cfg, GH_MAIN)
    assert proc.returncode == 0, proc.stderr
    run_id = report["mlflow"]["run_id"]
    assert _alias(client, name) == "1"
    v1 = client.get_model_version(name, "1")
    assert v1.status == "READY" and v1.run_id == run_id
    assert v1.source == f"runs:/{run_id}/student"
    assert v1.tags["ci_compress.verdict"] == "pass"
    assert json.loads(v1.tags["ci_compress.thresholds"]) == {"max_accuracy_drop": 5.0}
    assert v1.tags["ci_compress.promotion"] == "default-branch"
    assert v1.tags["ci_compress.student_sha256"] == report["student"]["sha256"]
    assert report["registry"] == {
        "registered_model": name,
        "version": "1",
        "source": f"runs:/{run_id}/student",
        "alias": "champion",
        "promotion": "default-branch",
        "promoted": True,
        "will_promote": True,
        "compared_with": "none",
        "alias_was": "none",
    }
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert tags["ci.provider"] == "github" and tags["ci.repository"] == "acme/models"
    assert tags["mlflow.source.git.commit"] == "a" * 40
    assert tags["mlflow.source.git.branch"] == "main"
    assert tags["ci.runner"] == "gh-runner-1" and tags["ci.actor"] == "alice"
    assert tags["ci.pipeline_url"] == "https://github.com/acme/models/actions/runs/101"
    assert tags["ci_compress.registered_version"] == "1"
    # The holdout is the run's dataset input, identified by its digest.
    (inp,) = run.inputs.dataset_inputs
    assert inp.dataset.digest == report["holdout"]["sha256"][:32]
    assert json.loads(inp.dataset.profile)["num_rows"] == report["holdout"]["samples"] == 540
    assert json.loads(inp.dataset.source) == {"builtin": "digits", "split": "test"}
    assert {t.key: t.value for t in inp.tags}["mlflow.data.context"] == "evaluation"
    assert "View run" not in proc.stdout  # MLflow's URL print is suppressed

    proc, report = _run(workdir, cfg, GH_PR)
    assert proc.returncode == 0, proc.stderr
    assert _alias(client, name) == "1"  # a PR build registers but never promotes
    v2 = client.get_model_version(name, "2")
    assert v2.tags["candidate"] == "true" and v2.tags["ci_compress.promotion"] == "pull-request"
    assert v2.tags["ci.pr_number"] == "7" and v2.tags["mlflow.source.git.branch"] == "feature"
    assert report["registry"]["promoted"] is False
    assert "@champion not moved (pull-request)" in proc.stdout

    proc, _ = _run(workdir, cfg, GH_PR, "--promote")
    assert proc.returncode == 2
    assert "Error: --promote: a pull/merge request build (#7) never moves the alias" in proc.stderr
    assert len(client.search_model_versions(f"name='{name}'")) == 2  # nothing was recorded


def test_local_run_promotes_only_with_the_promote_flag(
    workdir: Path, mlflow_server: MlflowServer
) -> None:
    client = MlflowClient(tracking_uri=mlflow_server.uri, registry_uri=mlflow_server.uri)
    name = _name("local")
    cfg = _cfg(mlflow_server.uri, name)
    proc, report = _run(workdir, cfg)
    assert proc.returncode == 0, proc.stderr
    assert report["registry"]["promotion"] == "local-run" and _alias(client, name) is None
    proc, report = _run(workdir, cfg, None, "--promote")
    assert proc.returncode == 0, proc.stderr
    assert report["registry"]["promotion"] == "promote-flag" and _alias(client, name) == "2"


def test_worse_candidate_fails_against_the_champion_but_passes_against_the_original(
    workdir: Path, mlflow_server: MlflowServer
) -> None:
    client = MlflowClient(tracking_uri=mlflow_server.uri, registry_uri=mlflow_server.uri)
    name = _name("baseline")
    thresholds = {"max_accuracy_drop": 5.0, "max_accuracy_drop_vs_champion": 0.0}

    # No champion yet: the champion check is skipped (not failed) and said so.
    champion_cfg = _cfg(
        mlflow_server.uri, name, passes=[{"type": "quantize"}], thresholds=thresholds
    )
    proc, first = _run(workdir, champion_cfg, GH_MAIN)
    assert proc.returncode == 0, proc.stderr
    skipped = [c for c in first["gate"]["checks"] if c["skipped"]]
    assert [c["threshold"] for c in skipped] == ["max_accuracy_drop_vs_champion"]
    assert skipped[0]["measured"] is None
    assert (
        first["baseline"]["status"] == "none"
        and "skipped (not failed)" in first["baseline"]["note"]
    )
    assert first["champion"] is None
    assert "[skip] max_accuracy_drop_vs_champion" in proc.stdout
    assert _alias(client, name) == "1"

    candidate_cfg = _cfg(
        mlflow_server.uri,
        name,
        passes=[{"type": "prune", "amount": 0.75}, {"type": "quantize"}],
        thresholds=thresholds,
    )
    proc, report = _run(workdir, candidate_cfg, GH_MAIN)
    assert proc.returncode == 1, proc.stderr
    checks = {c["threshold"]: c for c in report["gate"]["checks"]}
    assert checks["max_accuracy_drop"]["passed"]  # fine against the original...
    assert not checks["max_accuracy_drop_vs_champion"]["passed"]  # ...worse than production
    champ_acc = report["champion"]["metrics"]["accuracy"]
    cand_acc = report["student"]["metrics"]["accuracy"]
    assert champ_acc == pytest.approx(
        first["student"]["metrics"]["accuracy"]
    )  # same file, same holdout
    assert checks["max_accuracy_drop_vs_champion"]["measured"] == pytest.approx(
        (champ_acc - cand_acc) * 100
    )
    assert report["champion"]["sha256"] == first["student"]["sha256"]
    assert report["baseline"]["version"] == "1" and report["baseline"]["status"] == "compared"
    assert report["baseline"]["recorded"]["accuracy"] == pytest.approx(champ_acc)
    assert report["metrics"]["champion.accuracy"] == pytest.approx(champ_acc)
    # Three columns everywhere: original, current champion, candidate.
    assert "original  champion v1  candidate" in proc.stdout
    md = (workdir / "report" / "report.md").read_text()
    assert "| metric | original | champion v1 | candidate |" in md
    assert (
        f"| top-1 accuracy | {100 * report['teacher']['metrics']['accuracy']:.2f}% | {100 * champ_acc:.2f}% | {100 * cand_acc:.2f}% |"
        in md
    )
    # A failed gate is registered (tagged) but the alias stays.
    assert _alias(client, name) == "1"
    assert client.get_model_version(name, "2").tags["ci_compress.verdict"] == "fail"
    run = client.get_run(report["mlflow"]["run_id"])
    assert run.data.metrics["champion.accuracy"] == pytest.approx(champ_acc)


def test_registry_and_run_uris_as_the_teacher(workdir: Path, mlflow_server: MlflowServer) -> None:
    name = _name("teacher")
    # A champion that is a packed, pruned (dense float) student.ccz.
    proc, first = _run(
        workdir, _cfg(mlflow_server.uri, name, passes=[{"type": "prune", "amount": 0.5}]), GH_MAIN
    )
    assert proc.returncode == 0, proc.stderr
    run_id = first["mlflow"]["run_id"]
    mlflow = {"enabled": True, "tracking_uri": mlflow_server.uri, "experiment": f"{name}-next"}
    for uri, version in [
        (f"models:/{name}@champion", "1"),
        (f"runs:/{run_id}/student", None),
    ]:
        cfg = base_config(
            model={"uri": uri, "factory": FACTORY},
            passes=[{"type": "quantize"}],
            mlflow=mlflow,
        )
        proc, report = _run(workdir, cfg)
        assert proc.returncode == 0, (uri, proc.stderr)
        assert report["teacher"]["sha256"] == first["student"]["sha256"], uri
        assert report["teacher"]["metrics"]["accuracy"] == pytest.approx(
            first["student"]["metrics"]["accuracy"]
        )
        assert Path(report["teacher"]["file"]).is_relative_to(workdir / "report")
        source = report["mlflow"]["teacher_source"]
        assert source["uri"] == uri and source.get("version") == version

    # The tuner's per-trial gate (pipeline.evaluate, no MLflow run) fetches the same teacher.
    from ci_compress import pipeline
    from ci_compress.config import load_config

    cfg = base_config(
        model={"uri": f"models:/{name}@champion", "factory": FACTORY},
        passes=[{"type": "quantize"}],
        mlflow={"enabled": False, "tracking_uri": mlflow_server.uri},
    )
    loaded = load_config(write_config(workdir, cfg, name="trial.yaml"))
    trial = pipeline.evaluate(loaded, report_dir=workdir / "trial")
    assert trial.teacher.sha256 == first["student"]["sha256"]

    # ci-compress tune downloads a models:/ teacher once, before its trials: every trial
    # compresses that one file (an alias moved mid-study cannot mix teachers).
    # the champion is already 50% pruned: a prune to 50% or less would change nothing
    # (a config error since issue 20), so the trials prune further
    tune = {"space": {"passes[0].amount": {"low": 0.6, "high": 0.8}}, "max_trials": 3}
    cfg = base_config(
        model={"uri": f"models:/{name}@champion", "factory": FACTORY},
        passes=[{"type": "prune", "amount": 0.7}],
        mlflow={"enabled": False, "tracking_uri": mlflow_server.uri},
        tune={**tune, "dir": "tune-out"},
    )
    proc = run_cli(
        "tune", "--config", str(write_config(workdir, cfg, name="tune.yaml")), cwd=workdir
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("downloading the teacher") == 1
    pinned = list((workdir / "tune-out" / "teacher").rglob("*.ccz"))
    assert len(pinned) == 1
    trials = sorted((workdir / "tune-out" / "trials").iterdir())
    assert len(trials) >= 2
    assert not any((t / "downloads").exists() for t in trials)


@pytest.mark.parametrize(
    ("uri", "code", "needle"),
    [
        ("models:/no-such-model@champion", 3, "models:/no-such-model@champion not found"),
        ("runs:/0123456789abcdef/student", 3, "runs:/0123456789abcdef/student not found"),
        ("models:/just-a-name", 2, "model.uri: 'models:/just-a-name' is not of the expected form"),
    ],
)
def test_bad_model_uris_give_clear_errors(
    workdir: Path, mlflow_server: MlflowServer, uri: str, code: int, needle: str
) -> None:
    cfg = base_config(
        model={"uri": uri, "factory": FACTORY},
        mlflow={"enabled": True, "tracking_uri": mlflow_server.uri, "experiment": "bad-uris"},
    )
    proc, _ = _run(workdir, cfg)
    assert proc.returncode == code, proc.stderr
    assert needle in proc.stderr and "Traceback" not in proc.stderr


def test_explain_after_a_failed_gate_reuses_the_downloaded_teacher(
    workdir: Path, mlflow_server: MlflowServer
) -> None:
    """`explain: {when: fail}` loads the teacher again; a models:/ teacher is not
    downloaded a second time (the gate's file, the same version)."""
    from ci_compress import pipeline
    from ci_compress.config import load_config
    from ci_compress.tracking import FetchedModel, MlflowTracker

    name = _name("explain")
    proc, _first = _run(
        workdir, _cfg(mlflow_server.uri, name, passes=[{"type": "quantize"}]), GH_MAIN
    )
    assert proc.returncode == 0, proc.stderr

    class CountingTracker(MlflowTracker):
        """The real tracker; it only counts its downloads."""

        def __init__(self, uri: str) -> None:
            super().__init__(uri)
            self.fetched: list[str] = []

        def fetch(self, uri: str, dest: Path) -> FetchedModel:
            self.fetched.append(uri)
            return super().fetch(uri, dest)

    cfg = base_config(
        model={"uri": f"models:/{name}@champion", "factory": FACTORY},
        passes=[{"type": "prune", "amount": 0.5}],
        thresholds={"max_accuracy_drop": 1.0, "min_compression_ratio": 1000.0},
        mlflow={"enabled": True, "tracking_uri": mlflow_server.uri, "experiment": f"{name}-x"},
        explain={"when": "fail", "max_exclude": 1},
    )
    loaded = load_config(write_config(workdir, cfg, name="explain.yaml"))
    tracker = CountingTracker(mlflow_server.uri)
    tracker.check(f"{name}-x")
    report = pipeline.run(loaded, tracker=tracker, environ={}, report_dir=workdir / "ex")
    assert not report.passed and report.explain is not None
    assert tracker.fetched == [f"models:/{name}@champion"]


def test_a_pr_is_held_to_the_thresholds_its_champion_was_promoted_under(
    workdir: Path, mlflow_server: MlflowServer
) -> None:
    """Issue 16 item 2, against the real server: the policy is read from the registry,
    and a pull_request_target build (GITHUB_REF is the base branch) is a PR build."""
    client = MlflowClient(tracking_uri=mlflow_server.uri, registry_uri=mlflow_server.uri)
    name = _name("policy")
    proc, main = _run(
        workdir, _cfg(mlflow_server.uri, name, thresholds={"max_accuracy_drop": 1.5}), GH_MAIN
    )
    assert proc.returncode == 0, proc.stderr
    assert main["gate"].get("policy") is None and _alias(client, name) == "1"
    assert json.loads(client.get_model_version(name, "1").tags["ci_compress.thresholds"]) == {
        "max_accuracy_drop": 1.5
    }

    event = workdir / "event.json"
    event.write_text(json.dumps({"pull_request": {"number": 12}}))
    target = {
        **GH_MAIN,  # refs/heads/main: the base branch's ref
        "GITHUB_EVENT_NAME": "pull_request_target",
        "GITHUB_EVENT_PATH": str(event),
        "GITHUB_HEAD_REF": "loosen",
        "GITHUB_SHA": "c" * 40,
    }
    loose = _cfg(mlflow_server.uri, name, thresholds={"max_accuracy_drop": 50.0})
    proc, pr = _run(workdir, loose, target)
    assert proc.returncode in (0, 1), proc.stderr
    assert [(c["threshold"], c["limit"]) for c in pr["gate"]["checks"]] == [
        ("max_accuracy_drop", 1.5)
    ]
    assert pr["gate"]["policy"] == {
        "source": f"{name}@champion (version 1, promoted by default-branch)",
        "loosened": [
            {"threshold": "max_accuracy_drop", "config": 50.0, "policy": 1.5, "used": 1.5}
        ],
    }
    assert (
        "policy: max_accuracy_drop: this build's config says 50, looser than the 1.5" in proc.stdout
    )
    md = (workdir / "report" / "report.md").read_text()
    assert "| `max_accuracy_drop` | 50 | 1.5 | **1.5** |" in md
    # A PR build, though its ref is main: registered as a candidate, never promoted.
    assert pr["registry"]["promotion"] == "pull-request" and _alias(client, name) == "1"
    v2 = client.get_model_version(name, "2")
    assert v2.tags["ci.pr_number"] == "12" and v2.tags["ci_compress.promotion"] == "pull-request"
    assert json.loads(v2.tags["ci_compress.thresholds"]) == {"max_accuracy_drop": 1.5}
