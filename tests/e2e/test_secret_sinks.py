"""Every sink, searched for every secret: a gate, its CI renderers and a tune, for real.

Secrets enter the config only through ``${NAME}``: in ``mlflow.tracking_uri``'s
userinfo, in ``model.url``'s query (the local host serves the teacher only to that
exact URL), in a ``model.factory_kwargs`` value (the factory refuses to build without
the real one) and in ``mlflow.run_name``. One more comes the way Jenkins brings it: a
clone credential inside ``GIT_URL`` (issue 16: it reached the model-version tags).

So the code that *uses* the values gets them (the teacher downloads, the factory
builds, MLflow answers), and then every output is searched: stdout, stderr (progress
and logs), report.json, report.md, junit.xml, manifest.json and the packed file's
manifest; the MLflow run's name, params, tags and every artifact (the config copy
included), and the registered version's tags; the GitHub comment, job summary and step
outputs, the GitLab note and dotenv, the Jenkins description; and for ``ci-compress
tune``: tuned.yaml, each trial's report.json, tune-report.md, the Optuna storage and the
parent and nested MLflow runs.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlflow import MlflowClient

from ci_compress.packing.file import read_manifest
from ci_compress.reproducibility import read_reproducibility_manifest as read_manifest_of_report
from tests.conftest import MlflowServer, base_config, run_cli, write_config
from tests.helpers.fake_apis import fake_api
from tests.helpers.local_http import LocalServer, start

SECRETS = {
    "MLFLOW_URL_PASSWORD": "uri-Zq71-secret",  # mlflow.tracking_uri userinfo
    "MODEL_TOKEN": "url-Zq72-secret",  # model.url query
    "FACTORY_TOKEN": "kw-Zq73-secret",  # model.factory_kwargs value
    "RUN_SUFFIX": "run-Zq74-secret",  # mlflow.run_name
}
GIT_TOKEN = "git-Zq75-secret"  # inside Jenkins's GIT_URL, not interpolated
JENKINS = {
    "JENKINS_URL": "https://jenkins.example/",
    "BUILD_URL": "https://jenkins.example/job/gate/7/",
    "GIT_URL": f"https://jenkins-bot:{GIT_TOKEN}@git.example/acme/models.git",
    "GIT_COMMIT": "0123456789abcdef0123456789abcdef01234567",
    "GIT_BRANCH": "origin/feature",
}
EVERY = {**SECRETS, "GIT_URL credential": GIT_TOKEN}


def leaks(sinks: dict[str, bytes | str]) -> list[str]:
    """'<secret> in <sink>' for every secret found anywhere."""
    found = []
    for sink, content in sinks.items():
        data = content.encode() if isinstance(content, str) else content
        found += [f"{name} in {sink}" for name, v in EVERY.items() if v.encode() in data]
    return found


def files_under(root: Path, label: str) -> dict[str, bytes | str]:
    return {
        f"{label}/{p.relative_to(root)}": p.read_bytes() for p in root.rglob("*") if p.is_file()
    }


def mlflow_sinks(client: MlflowClient, run_id: str, dest: Path) -> dict[str, bytes | str]:
    run = client.get_run(run_id)
    label = f"MLflow run {run.info.run_name}"
    out: dict[str, bytes | str] = {
        f"{label} name": run.info.run_name or "",
        f"{label} params": json.dumps(run.data.params),
        f"{label} tags": json.dumps(run.data.tags),
        f"{label} inputs": str(run.inputs),
    }
    local = Path(client.download_artifacts(run_id, "", str(dest / run_id)))
    out.update(files_under(local, f"{label} artifacts"))
    return out


def config(host: LocalServer, server: MlflowServer, teacher: bytes, **extra: Any) -> dict[str, Any]:
    host.files[f"teacher.safetensors?token={SECRETS['MODEL_TOKEN']}"] = teacher
    return base_config(
        model={
            "url": host.url("/files/teacher.safetensors") + "?token=${MODEL_TOKEN}",
            "sha256": hashlib.sha256(teacher).hexdigest(),
            "factory": "tests.e2e.secret_factory:digits_mlp_with_token",
            "factory_kwargs": {"token": "${FACTORY_TOKEN}"},
            "allow_http": True,
        },
        data={"holdout": {"builtin": "digits", "split": "test", "limit": 400}},
        thresholds={"max_accuracy_drop": 5.0},
        **extra,
    )


def tracking(server: MlflowServer) -> str:
    return server.uri.replace("http://", "http://ci:${MLFLOW_URL_PASSWORD}@")


@pytest.fixture(scope="module")
def host() -> Iterator[LocalServer]:
    s = start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def gate(
    tmp_path_factory: pytest.TempPathFactory,
    demo_dir: Path,
    host: LocalServer,
    mlflow_server: MlflowServer,
) -> dict[str, Any]:
    """One real gate (registered in MLflow) run the way Jenkins would run it."""
    work = tmp_path_factory.mktemp("secret-gate")
    teacher = (demo_dir / "digits_mlp.safetensors").read_bytes()
    mlflow = {
        "enabled": True,
        "tracking_uri": tracking(mlflow_server),
        "experiment": "secret-sinks",
        "run_name": "gate-${RUN_SUFFIX}",
        "registered_model": "secret-sinks",
    }
    cfg = write_config(work, config(host, mlflow_server, teacher, mlflow=mlflow))
    proc = run_cli("run", "--config", str(cfg), cwd=work, env={**SECRETS, **JENKINS})
    assert proc.returncode == 0, proc.stderr
    return {
        "work": work,
        "proc": proc,
        "report": json.loads((work / "report/report.json").read_text()),
    }


@pytest.mark.slow
def test_a_gate_leaks_no_secret(gate: dict[str, Any], mlflow_server: MlflowServer) -> None:
    work, proc, report = gate["work"], gate["proc"], gate["report"]
    sinks: dict[str, bytes | str] = {"stdout": proc.stdout, "stderr (progress, logs)": proc.stderr}
    sinks.update(files_under(work / "report", "report dir"))  # json, md, junit, manifest, ...
    manifest, _ = read_manifest(Path(report["student"]["file"]))
    sinks["student.ccz manifest"] = json.dumps(manifest)
    client = MlflowClient(tracking_uri=mlflow_server.uri)
    sinks.update(mlflow_sinks(client, report["mlflow"]["run_id"], work / "mlflow"))
    version = client.get_model_version("secret-sinks", report["registry"]["version"])
    sinks["registered version tags"] = json.dumps(version.tags)
    sinks["registered version"] = json.dumps(
        {"source": version.source, "description": version.description, "run": version.run_id}
    )
    assert not leaks(sinks)

    # The writers show where each value came from; the users got the value itself.
    model = report["config"]["model"]
    assert model["factory_kwargs"] == {"token": "${FACTORY_TOKEN}"}
    assert model["url"].endswith("/files/teacher.safetensors?token=${MODEL_TOKEN}")
    assert report["config"]["mlflow"]["run_name"] == "gate-${RUN_SUFFIX}"
    # the manifest keeps the config text as read (templates are not secrets), so it re-runs
    assert report["reproducibility"]["config"]["text"] == (work / "compress.yaml").read_text()
    assert read_manifest_of_report(work / "report" / "report.json")["config"]["text"]
    run = client.get_run(report["mlflow"]["run_id"])
    assert run.data.params["model.factory_kwargs.token"] == "${FACTORY_TOKEN}"
    assert run.info.run_name == "gate-${RUN_SUFFIX}"
    # issue 16: the CI context keeps the repository, never its credential
    assert version.tags["ci.repository"] == "https://git.example/acme/models.git"
    assert run.data.tags["ci.repository"] == "https://git.example/acme/models.git"
    assert report["environment"]["ci"]["repository"] == "https://git.example/acme/models.git"


@pytest.mark.slow
def test_the_ci_renderers_leak_no_secret(gate: dict[str, Any], tmp_path: Path) -> None:
    report_json = str(gate["work"] / "report" / "report.json")
    sinks: dict[str, bytes | str] = {}
    with fake_api() as (api, state):
        event = tmp_path / "event.json"
        event.write_text(json.dumps({"pull_request": {"number": 7}}))
        summary, outputs = tmp_path / "summary.md", tmp_path / "outputs.txt"
        github = {
            "GITHUB_ACTIONS": "true",
            "GITHUB_EVENT_NAME": "pull_request",
            "GITHUB_EVENT_PATH": str(event),
            "GITHUB_REPOSITORY": "acme/models",
            "GITHUB_API_URL": api,
            "GITHUB_TOKEN": "ghs_token",
            "GITHUB_STEP_SUMMARY": str(summary),
            "GITHUB_OUTPUT": str(outputs),
        }
        proc = run_cli("report", "github", "--report", report_json, cwd=tmp_path, env=github)
        assert proc.returncode == 0, proc.stderr
        (comment,) = state.comments[7]
        sinks |= {"PR comment": comment["body"], "job summary": summary.read_text()}
        sinks |= {"step outputs": outputs.read_text(), "github stdout": proc.stdout + proc.stderr}

        dotenv = tmp_path / "ci-compress.env"
        gitlab = {
            "GITLAB_CI": "true",
            "CI_API_V4_URL": f"{api}/api/v4",
            "CI_PROJECT_ID": "123",
            "CI_MERGE_REQUEST_IID": "5",
            "CI_COMPRESS_GITLAB_TOKEN": "glpat-token",
        }
        args = ["report", "gitlab", "--report", report_json, "--dotenv", str(dotenv)]
        proc = run_cli(*args, cwd=tmp_path, env=gitlab)
        assert proc.returncode == 0, proc.stderr
        (note,) = state.notes[("123", "5")]
        sinks |= {"MR note": note["body"], "dotenv": dotenv.read_text()}
        sinks["gitlab stdout"] = proc.stdout + proc.stderr

    description = tmp_path / "description.txt"
    args = ["report", "jenkins", "--report", report_json, "--description-file", str(description)]
    proc = run_cli(*args, cwd=tmp_path, env=JENKINS)
    assert proc.returncode == 0, proc.stderr
    sinks |= {"jenkins description": description.read_text(), "jenkins stdout": proc.stdout}
    assert "<!-- ci-compress:report" in comment["body"] and "ci-compress" in note["body"]
    assert not leaks(sinks)


@pytest.mark.slow
def test_tune_leaks_no_secret(
    tmp_path: Path, demo_dir: Path, host: LocalServer, mlflow_server: MlflowServer
) -> None:
    teacher = (demo_dir / "digits_mlp.safetensors").read_bytes()
    mlflow = {
        "enabled": True,
        "tracking_uri": tracking(mlflow_server),
        "experiment": "secret-sinks-tune",
        "run_name": "gate-${RUN_SUFFIX}",
    }
    tune = {"space": {"passes[0].amount": {"low": 0.3, "high": 0.6}}, "max_trials": 2}
    cfg = write_config(tmp_path, config(host, mlflow_server, teacher, mlflow=mlflow, tune=tune))
    proc = run_cli("tune", "--config", str(cfg), cwd=tmp_path, env={**SECRETS, **JENKINS})
    assert proc.returncode == 0, proc.stderr

    tuned = tmp_path / "tuned.yaml"
    trials = sorted((tmp_path / "ci-compress-tune" / "trials").glob("*/report.json"))
    assert len(trials) == 2
    sinks: dict[str, bytes | str] = {"stdout": proc.stdout, "stderr (progress, logs)": proc.stderr}
    sinks["tuned.yaml"] = tuned.read_text()
    sinks.update(files_under(tmp_path / "ci-compress-tune", "tune dir"))  # trials, report, png
    sinks["Optuna storage"] = (tmp_path / "ci-compress-tune.db").read_bytes()
    client = MlflowClient(tracking_uri=mlflow_server.uri)
    experiment = client.get_experiment_by_name("secret-sinks-tune")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 3  # the study's parent run and one nested run per trial
    for run in runs:
        sinks.update(mlflow_sinks(client, run.info.run_id, tmp_path / "mlflow"))
    assert not leaks(sinks)

    # tuned.yaml is a config like the one the study started from: references, not values
    written = yaml.safe_load(tuned.read_text())
    assert written["mlflow"]["tracking_uri"] == tracking(mlflow_server)
    assert written["model"]["factory_kwargs"] == {"token": "${FACTORY_TOKEN}"}
    trial = json.loads(trials[0].read_text())
    assert trial["config"]["model"]["url"].endswith("?token=${MODEL_TOKEN}")
    check = run_cli("validate", "--config", str(tuned), cwd=tmp_path, env=SECRETS)
    assert check.returncode == 0, check.stderr
    shutil.rmtree(tmp_path / "mlflow")
