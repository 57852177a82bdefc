"""The CI files themselves: schema-valid (offline), consistent with the CLI, and what
`ci-compress init` writes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO
from tests.helpers.cli import run_cli
from tests.helpers.servers import free_port

CHECK = [sys.executable, "-m", "check_jsonschema"]


def _offline_env() -> dict[str, str]:
    """Any network attempt fails: proxies point at a closed port on 127.0.0.1."""
    dead = f"http://127.0.0.1:{free_port()}"
    env = dict(os.environ)
    env.update(HTTP_PROXY=dead, HTTPS_PROXY=dead, http_proxy=dead, https_proxy=dead, NO_PROXY="")
    return env


def check(schema: str, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CHECK, "--builtin-schema", schema, str(path)],
        capture_output=True,
        text=True,
        env=_offline_env(),
        timeout=120,
    )


def check_documents(schema: str, path: Path, tmp: Path) -> list[subprocess.CompletedProcess[str]]:
    """Validate each YAML document separately (a GitLab spec header, then the jobs)."""
    results = []
    for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
        one = tmp / f"{path.stem}-{i}.json"
        one.write_text(json.dumps(doc))
        results.append(check(schema, one))
    return results


def test_builtin_schemas_are_vendored_in_the_package() -> None:
    import check_jsonschema

    vendor = Path(check_jsonschema.__file__).parent / "builtin_schemas" / "vendor"
    for name in ("github-actions", "github-workflows", "gitlab-ci"):
        assert json.loads((vendor / f"{name}.json").read_text())  # a real schema, on disk


@pytest.mark.parametrize(
    ("schema", "path"),
    [
        ("vendor.github-actions", "action.yml"),
        ("vendor.github-workflows", ".github/workflows/ci.yml"),
        ("vendor.github-workflows", ".github/workflows/model-gate.yml"),
        ("vendor.github-workflows", "examples/github/model-gate-fork-comment.yml"),
    ],
)
def test_github_files_validate(schema: str, path: str) -> None:
    proc = check(schema, REPO / path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "path", ["templates/ci-compress.yml", "pipelines/gitlab/ci-compress.gitlab-ci.yml"]
)
def test_gitlab_files_validate_document_by_document(path: str, tmp_path: Path) -> None:
    results = check_documents("vendor.gitlab-ci", REPO / path, tmp_path)
    assert len(results) == 2  # spec header, then the job
    for proc in results:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    spec, jobs = yaml.safe_load_all((REPO / path).read_text())
    assert set(spec) == {"spec"}
    assert not {"default", "variables", "stages", "workflow", "include"} & set(jobs)  # no globals
    (job,) = jobs.values()
    assert job["allow_failure"] == {"exit_codes": [6]}
    assert job["artifacts"]["when"] == "always"
    assert set(job["artifacts"]["reports"]) == {"junit", "dotenv"}
    script = "\n".join(job["script"])
    assert "$[[" not in script  # inputs reach the script through variables only
    used = set(re.findall(r"\$\[\[\s*inputs\.([\w-]+)\s*\]\]", yaml.safe_dump(jobs)))
    assert used == set(spec["spec"]["inputs"])  # every input used, none undeclared


def test_the_schema_check_can_fail(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"job": {"script": "x", "allow_failure": {"exit_codes": "six"}}}))
    assert check("vendor.gitlab-ci", bad).returncode == 1
    action = yaml.safe_load((REPO / "action.yml").read_text())
    del next(s for s in action["runs"]["steps"] if "run" in s)["shell"]
    bad_action = tmp_path / "action.json"
    bad_action.write_text(json.dumps(action))
    assert check("vendor.github-actions", bad_action).returncode == 1


def test_component_and_include_template_are_the_same_job() -> None:
    a = list(yaml.safe_load_all((REPO / "templates/ci-compress.yml").read_text()))
    b = list(yaml.safe_load_all((REPO / "pipelines/gitlab/ci-compress.gitlab-ci.yml").read_text()))
    assert a == b


def test_action_passes_inputs_through_env_only() -> None:
    action = yaml.safe_load((REPO / "action.yml").read_text())
    for step in action["runs"]["steps"]:
        if "run" in step:
            assert "${{" not in step["run"]
            assert (REPO / step["run"].split('"$GITHUB_ACTION_PATH/')[1].split('"')[0]).is_file()
    assert {
        "passed",
        "accuracy-drop",
        "compression-ratio",
        "report-path",
        "mlflow-run-id",
        "model-version",
    } <= set(action["outputs"])
    assert action["inputs"]["fail-on"]["default"] == "fail"


def test_precommit_manifest_validates() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pre_commit", "validate-manifest", str(REPO / ".pre-commit-hooks.yaml")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    hooks = {h["id"]: h for h in yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text())}
    assert set(hooks) == {"ci-compress", "ci-compress-system", "ci-compress-python"}
    assert hooks["ci-compress"]["language"] == "system"  # the default; python is opt-in
    assert hooks["ci-compress-python"]["language"] == "python"
    assert hooks["ci-compress-system"]["language"] == "system"
    for h in hooks.values():
        assert h["stages"] == ["pre-push"] and h["pass_filenames"] is False and h["require_serial"]
        assert re.search(h["files"], "models/compress.yaml") and not re.search(
            h["files"], "README.md"
        )


def test_jenkins_step_maps_every_documented_exit_code() -> None:
    from ci_compress.errors import ExitCode

    groovy = (REPO / "pipelines/jenkins/vars/ciCompress.groovy").read_text()
    assert "def call(Map args = [:])" in groovy
    assert "returnStatus: true" in groovy and "withCredentials" in groovy
    assert "junit(" in groovy and "archiveArtifacts(" in groovy
    for code in (
        ExitCode.CONFIG,
        ExitCode.INPUT,
        ExitCode.INFRA,
        ExitCode.INTERNAL,
        ExitCode.GATE_FAILED,
    ):
        assert f"case {int(code)}:" in groovy
    assert re.search(r"case 6:\s*\n\s*unstable\(", groovy)
    assert "${" not in "".join(
        re.findall(r"'''(.*?)'''", groovy, flags=re.S)
    )  # no Groovy interpolation in sh
    assert (REPO / "pipelines/jenkins/vars/ciCompress.txt").read_text().strip()
    assert "ciCompress(" in (REPO / "pipelines/jenkins/Jenkinsfile").read_text()


@pytest.mark.parametrize(
    ("provider", "dest", "schema"),
    [
        ("github", ".github/workflows/model-gate.yml", "vendor.github-workflows"),
        ("gitlab", ".gitlab-ci.yml", "vendor.gitlab-ci"),
        ("jenkins", "Jenkinsfile", None),
        ("pre-commit", ".pre-commit-config.yaml", None),
    ],
)
def test_init_writes_a_valid_config_and_the_provider_file(
    provider: str, dest: str, schema: str | None, tmp_path: Path
) -> None:
    proc = run_cli("init", "--provider", provider, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / dest).is_file() and (tmp_path / "compress.yaml").is_file()
    # The starter names a placeholder factory: validate says so (exit 2) until it exists.
    untouched = run_cli("validate", "--config", "compress.yaml", cwd=tmp_path)
    assert untouched.returncode == 2
    assert "model.factory: cannot import 'mypackage.models'" in untouched.stderr
    package = tmp_path / "mypackage"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "models.py").write_text(
        "import torch\n\ndef build_model():\n    return torch.nn.Linear(64, 10)\n"
    )
    valid = run_cli("validate", "--config", "compress.yaml", cwd=tmp_path)
    assert valid.returncode == 0 and "valid" in valid.stdout, valid.stderr
    if schema:
        res = check(schema, tmp_path / dest)
        assert res.returncode == 0, res.stdout + res.stderr
    if provider == "pre-commit":
        cfg = subprocess.run(
            [sys.executable, "-m", "pre_commit", "validate-config", str(tmp_path / dest)],
            capture_output=True, text=True,
        )  # fmt: skip
        assert cfg.returncode == 0, cfg.stdout + cfg.stderr

    # never overwrite without --force: exit 2, one line, files untouched
    (tmp_path / "compress.yaml").write_text("# mine\n")
    again = run_cli("init", "--provider", provider, cwd=tmp_path)
    assert again.returncode == 2
    assert again.stderr.strip().splitlines() == [
        f"Error: compress.yaml, {dest} already exist; pass --force to overwrite"
    ]
    assert (tmp_path / "compress.yaml").read_text() == "# mine\n"
    forced = run_cli("init", "--provider", provider, "--force", cwd=tmp_path)
    assert forced.returncode == 0 and "version: 1" in (tmp_path / "compress.yaml").read_text()
