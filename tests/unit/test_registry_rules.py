"""Unit tests for the registry rules: config fields, champion checks, promotion, CI tags."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from ci_compress import pipeline
from ci_compress.ci.env import CIContext, detect
from ci_compress.config import load_config, parse_config
from ci_compress.errors import ArtifactError, ConfigError, TrackingError
from ci_compress.gate import decide
from ci_compress.record import promotion_decision
from ci_compress.tracking import (
    MemoryTracker,
    parse_model_uri,
    pick_model_file,
    request_bound_seconds,
)
from tests.helpers.configs import base_config, write_config


def _parse(**over: object) -> object:
    return parse_config(base_config(**over))


def test_registry_fields_default_to_no_registration() -> None:
    cfg = parse_config(base_config())
    assert cfg.mlflow.registered_model is None and cfg.mlflow.alias == "champion"


@pytest.mark.parametrize("alias", ["v3", "V12", "latest"])
def test_reserved_aliases_are_config_errors(alias: str) -> None:
    with pytest.raises(ConfigError) as e:
        _parse(mlflow={"enabled": True, "registered_model": "m", "alias": alias})
    assert e.value.path == "mlflow.alias" and "reserved" in e.value.message


def test_alias_with_bad_characters_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as e:
        _parse(mlflow={"registered_model": "m", "alias": "prod env"})
    assert e.value.path == "mlflow.alias"


def test_champion_threshold_needs_a_registered_model() -> None:
    with pytest.raises(ConfigError) as e:
        _parse(thresholds={"max_accuracy_drop_vs_champion": 0.0})
    assert e.value.path == "thresholds.max_accuracy_drop_vs_champion"
    assert "mlflow.registered_model" in e.value.message
    ok = parse_config(
        base_config(
            thresholds={"max_accuracy_drop_vs_champion": 0.0},
            mlflow={"enabled": True, "registered_model": "m"},
        )
    )
    assert ok.thresholds.active() == {"max_accuracy_drop_vs_champion": 0.0}


@pytest.mark.parametrize(
    "uri", ["models:/m@champion", "models:/m/3", "models:/m/3/student.ccz", "runs:/abc123/student"]
)
def test_model_uri_forms_are_accepted(uri: str) -> None:
    cfg = _parse(model={"uri": uri, "factory": "ci_compress.demo.models:digits_mlp"})
    assert cfg.model.uri == uri
    assert parse_model_uri(uri)[0] in ("alias", "version", "run")


@pytest.mark.parametrize("uri", ["models:/m", "models:/m/latest-ish", "runs:/abc", "s3://b/k"])
def test_bad_model_uris_are_config_errors(uri: str) -> None:
    with pytest.raises(ConfigError) as e:
        _parse(model={"uri": uri})
    assert e.value.path == "model.uri" and "models:/<name>@<alias>" in (e.value.hint or "")


def test_parse_model_uri_parts() -> None:
    assert parse_model_uri("models:/digits@champion") == ("alias", "digits", "champion", "")
    assert parse_model_uri("models:/digits/7/student.ccz") == (
        "version",
        "digits",
        "7",
        "student.ccz",
    )
    assert parse_model_uri("runs:/r1/student/student.ccz") == (
        "run",
        "r1",
        "",
        "student/student.ccz",
    )


def test_pick_model_file(tmp_path: object) -> None:
    from pathlib import Path

    d = Path(str(tmp_path))
    (d / "a").mkdir()
    (d / "a" / "student.ccz").write_bytes(b"x")
    (d / "a" / "notes.txt").write_text("x")
    assert pick_model_file(d / "a", "runs:/r/a").name == "student.ccz"
    (d / "a" / "other.pt").write_bytes(b"x")
    with pytest.raises(ArtifactError, match="several model files"):
        pick_model_file(d / "a", "runs:/r/a")
    (d / "b").mkdir()
    with pytest.raises(ArtifactError, match="no model file"):
        pick_model_file(d / "b", "runs:/r/b")


MEASURED = {
    "teacher.accuracy": 0.97,
    "student.accuracy": 0.95,
    "teacher.file_bytes": 1000.0,
    "student.file_bytes": 200.0,
}


def test_champion_checks_are_skipped_not_failed_without_a_champion() -> None:
    result = decide({"max_accuracy_drop": 5.0, "max_accuracy_drop_vs_champion": 0.0}, MEASURED)
    assert result.passed
    skipped = [c for c in result.checks if c.skipped]
    assert [c.threshold for c in skipped] == ["max_accuracy_drop_vs_champion"]
    assert math.isnan(skipped[0].measured) and skipped[0].to_dict()["measured"] is None


def test_worse_than_champion_fails_while_within_the_original_limit() -> None:
    m = {**MEASURED, "champion.accuracy": 0.96, "champion.file_bytes": 250.0}
    result = decide(
        {
            "max_accuracy_drop": 5.0,
            "max_accuracy_drop_vs_champion": 0.5,
            "max_size_ratio_vs_champion": 1.0,
        },
        m,
    )
    by = {c.threshold: c for c in result.checks}
    assert by["max_accuracy_drop"].passed
    assert not by["max_accuracy_drop_vs_champion"].passed
    assert by["max_accuracy_drop_vs_champion"].measured == pytest.approx(1.0)
    assert by["max_size_ratio_vs_champion"].passed
    assert by["max_size_ratio_vs_champion"].measured == pytest.approx(0.8)
    assert not result.passed


def _ci(**kw: object) -> CIContext:
    return CIContext(**{"provider": "github", "branch": "main", "default_branch": "main", **kw})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("ci", "passed", "promote", "expected"),
    [
        (_ci(), True, False, (True, "default-branch")),
        (_ci(), False, False, (False, "gate-failed")),
        (_ci(pr_number="7", branch="feature"), True, False, (False, "pull-request")),
        (_ci(pr_number="7", branch="feature"), True, True, (False, "pull-request")),
        (_ci(branch="release"), True, False, (False, "not-default-branch")),
        (_ci(provider="local"), True, False, (False, "local-run")),
        (_ci(provider="local", branch=None), True, True, (True, "promote-flag")),
    ],
)
def test_promotion_decision(
    ci: CIContext, passed: bool, promote: bool, expected: tuple[bool, str]
) -> None:
    assert promotion_decision(passed=passed, ci=ci, promote=promote, registered=True) == expected


def test_ci_tags_per_provider(tmp_path: object) -> None:
    from pathlib import Path

    gh = detect(
        {
            "GITHUB_ACTIONS": "true",
            "GITHUB_REF": "refs/pull/7/merge",
            "GITHUB_HEAD_REF": "feature",
            "GITHUB_SHA": "abc",
            "GITHUB_REPOSITORY": "o/r",
            "GITHUB_RUN_ID": "42",
            "GITHUB_RUN_ATTEMPT": "2",
            "GITHUB_ACTOR": "octo",
            "RUNNER_NAME": "runner-1",
        },
        Path(str(tmp_path)),
    ).tags()
    assert gh["ci.provider"] == "github" and gh["ci.pr_number"] == "7"
    assert gh["ci.runner"] == "runner-1" and gh["ci.actor"] == "octo"
    assert gh["ci.pipeline_url"] == "https://github.com/o/r/actions/runs/42/attempts/2"
    assert gh["mlflow.source.git.branch"] == "feature" and gh["ci.repository"] == "o/r"
    gl = detect(
        {
            "GITLAB_CI": "true",
            "CI_COMMIT_SHA": "def",
            "CI_COMMIT_BRANCH": "main",
            "CI_DEFAULT_BRANCH": "main",
            "CI_PROJECT_PATH": "g/p",
            "CI_PIPELINE_URL": "https://gl/g/p/-/pipelines/9",
            "CI_JOB_URL": "https://gl/g/p/-/jobs/10",
            "CI_RUNNER_DESCRIPTION": "shared-runner",
            "GITLAB_USER_LOGIN": "dev",
        },
        Path(str(tmp_path)),
    )
    assert gl.on_default_branch
    t = gl.tags()
    assert t["ci.pipeline_url"].endswith("/pipelines/9") and t["ci.job_url"].endswith("/jobs/10")
    assert t["ci.runner"] == "shared-runner" and t["ci.actor"] == "dev"
    jk = detect(
        {
            "JENKINS_URL": "https://j/",
            "BUILD_URL": "https://j/job/x/5/",
            "NODE_NAME": "agent-2",
            "CHANGE_ID": "12",
            "CHANGE_BRANCH": "feat",
            "GIT_COMMIT": "123",
        },
        Path(str(tmp_path)),
    ).tags()
    assert jk["ci.runner"] == "agent-2" and jk["ci.pr_number"] == "12"
    assert jk["ci.pipeline_url"] == "https://j/job/x/5/"


def test_request_bound_is_finite_and_follows_the_variables() -> None:
    # 3 attempts x (20 s connect + 20 s read) + backoff 2 s + 0.5 s jitter
    assert request_bound_seconds({}) == pytest.approx(122.5)
    assert request_bound_seconds(
        {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
    ) == pytest.approx(10.0)


class _Recording(MemoryTracker):
    """In-memory tracker that records the order of writes and can fail one of them."""

    def __init__(self, fail_at: str | None = None) -> None:
        super().__init__()
        self.calls: list[str] = []
        self.fail_at = fail_at

    def _note(self, what: str) -> None:
        self.calls.append(what)
        if what == self.fail_at:
            raise TrackingError(f"MLflow refused {what}")

    def log_metrics(self, metrics: Any, step: int = 0) -> None:
        self._note("log_metrics")
        super().log_metrics(metrics, step)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self._note(f"log_artifact:{artifact_path or ''}/{path.name}")
        super().log_artifact(path, artifact_path)

    def register(self, name: str, artifact_path: str, tags: Any) -> Any:
        self._note("register")
        return super().register(name, artifact_path, tags)

    def end_run(self, status: str) -> None:
        self._note(f"end_run:{status}")
        super().end_run(status)

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self._note("set_alias")
        super().set_alias(name, alias, version)


GH_MAIN = {"GITHUB_ACTIONS": "true", "GITHUB_REF": "refs/heads/main", "GITHUB_REF_NAME": "main"}


def _loaded(workdir: Path) -> Any:
    cfg = base_config(
        passes=[{"type": "quantize"}],
        mlflow={"enabled": True, "registered_model": "m"},
        thresholds={"max_accuracy_drop": 5.0, "max_accuracy_drop_vs_champion": 0.0},
    )
    return load_config(write_config(workdir, cfg))


def test_the_alias_moves_last_after_everything_is_recorded(workdir: Path) -> None:
    t = _Recording()
    report = pipeline.run(_loaded(workdir), tracker=t, environ=GH_MAIN)
    assert report.passed and report.registry["promoted"] is True
    assert t.calls[-1] == "set_alias"
    before = t.calls[:-1]
    for needed in (
        "log_metrics",
        "log_artifact:student/student.ccz",
        "register",
        "end_run:FINISHED",
    ):
        assert needed in before
    assert before.index("register") > before.index("log_artifact:student/student.ccz")
    assert t.get_alias("m", "champion") == "1"


@pytest.mark.parametrize("fail_at", ["register", "log_artifact:/report.json", "set_alias"])
def test_a_failure_anywhere_leaves_the_alias_and_marks_the_run_failed(
    workdir: Path, fail_at: str
) -> None:
    t = _Recording(fail_at=fail_at)
    with pytest.raises(TrackingError):
        pipeline.run(_loaded(workdir), tracker=t, environ=GH_MAIN)
    assert t.get_alias("m", "champion") is None
    (run,) = t.runs.values()
    assert run["status"] == "FAILED" and run["tags"]["ci_compress.status"] == "failed"
    for v in t.registry.get("m", {}).get("versions", []):
        assert v.tags["ci_compress.status"] == "failed"


def test_promote_flag_is_refused_in_a_pull_request(workdir: Path) -> None:
    t = _Recording()
    env = {"GITHUB_ACTIONS": "true", "GITHUB_REF": "refs/pull/7/merge", "GITHUB_HEAD_REF": "f"}
    with pytest.raises(ConfigError) as e:
        pipeline.run(_loaded(workdir), tracker=t, environ=env, promote=True)
    assert e.value.path == "--promote" and t.calls == [] and t.runs == {}


def test_a_tolerated_inconclusive_gate_does_not_block_and_never_promotes(workdir: Path) -> None:
    """inconclusive: warn lets the merge through, but 'not shown worse' is not 'shown
    good enough': the alias stays where it was (the README's worked example, 80%)."""
    cfg = base_config(
        passes=[{"type": "prune", "amount": 0.8}, {"type": "quantize"}],
        mlflow={"enabled": True, "registered_model": "m"},
        thresholds={"max_accuracy_drop": 1.5, "decision": "confident", "inconclusive": "warn"},
    )
    t = _Recording()
    report = pipeline.run(load_config(write_config(workdir, cfg)), tracker=t, environ=GH_MAIN)
    assert report.verdict == "inconclusive" and report.passed and report.exit_code == 0
    assert report.registry["promotion"] == "inconclusive"
    assert report.registry["promoted"] is False and "set_alias" not in t.calls
    assert t.get_alias("m", "champion") is None
    (version,) = t.registry["m"]["versions"]
    assert version.tags["ci_compress.promotion"] == "inconclusive"


@pytest.mark.parametrize(
    ("detail", "auth"),
    [
        (
            "API request to endpoint /api/2.0/mlflow/runs/create failed with error code 401 != 200",
            True,
        ),
        ("API request failed with error code 403 != 200. Response body: 'Permission denied'", True),
        ("Unauthorized", True),
        # A dead server whose port, or a run id, merely contains the digits: not credentials.
        (
            "API request to http://127.0.0.1:40137/api/2.0/mlflow/registered-models/alias "
            "failed with exception HTTPConnectionPool(host='127.0.0.1', port=40137): "
            "Max retries exceeded (Connection refused)",
            False,
        ),
        ("Run 'ab4013cd9e' not found", False),
        ("connection to 10.0.40.3 refused", False),
    ],
)
def test_only_a_401_or_403_status_reads_as_refused_credentials(detail: str, auth: bool) -> None:
    from ci_compress.tracking import _looks_like_auth_failure

    assert _looks_like_auth_failure(detail) is auth
