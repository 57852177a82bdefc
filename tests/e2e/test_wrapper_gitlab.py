"""The GitLab template and catalog component as a runner runs them: under gitlab-ci-local
(pinned 4.70.0) in shell mode, in a git repository whose origin makes the component
include resolve to the local file, with a local stand-in for the REST API (MR notes);
the job script also under dash, the POSIX sh an alpine image falls back to; and this
repository's own .gitlab-ci.yml. gitlab-ci-local exits 0 even when a job fails, so each
job's status is read from its output. Issue 17, items 1, 2, 3 and 4."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.test_ci_files import check_documents
from tests.helpers.configs import base_config, write_config
from tests.helpers.fake_apis import fake_api
from tests.helpers.wrapper_tools import (
    REPO,
    SITE_PACKAGES,
    clean_env,
    copy_checkout,
    fresh_venv,
    gitlab_ci_local,
    release_archive,
    require_tool,
)

pytestmark = pytest.mark.slow
TEMPLATES = ["templates/ci-compress.yml", "pipelines/gitlab/ci-compress.gitlab-ci.yml"]
INCONCLUSIVE = {"max_accuracy_drop": 0.3, "decision": "confident"}  # drop 0.19, CI [0, 0.56]
STATUS = re.compile(r"^\s*(PASS|FAIL|WARN)\s+(\S+)\s*$")


@pytest.fixture
def gcl() -> str:
    return gitlab_ci_local()


@pytest.fixture
def api() -> Iterator[tuple[str, Any]]:
    with fake_api() as (url, state):
        yield url, state


def git(*args: str, cwd: Path) -> str:
    proc = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=cwd, capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    return proc.stdout.strip()


def gitlab_project(root: Path) -> str:
    """Commit ``root`` as a project whose origin is gitlab.example.com/acme/ci-compress:
    ``component: $CI_SERVER_FQDN/$CI_PROJECT_PATH/ci-compress@$CI_COMMIT_SHA`` then
    resolves to this commit's templates/ci-compress.yml. Returns the commit."""
    require_tool("git")
    (root / ".gitignore").write_text(".gitlab-ci-local/\n.cache/\n")
    git("init", "-q", "-b", "main", cwd=root)
    git("remote", "add", "origin", "https://gitlab.example.com/acme/ci-compress.git", cwd=root)
    git("add", "-A", cwd=root)
    git("commit", "-q", "-m", "pipeline", cwd=root)
    return git("rev-parse", "HEAD", cwd=root)


def run_pipeline(
    gcl: str, root: Path, env: dict[str, str], variables: dict[str, str], *jobs: str
) -> tuple[dict[str, str], str]:
    """Run gitlab-ci-local in shell mode; returns ({job: PASS|FAIL|WARN}, output)."""
    args = [gcl, "--force-shell-executor"]
    for k, v in variables.items():
        args += ["--variable", f"{k}={v}"]
    env = {**env, "GCL_IGNORE_PREDEFINED_VARS": ",".join(variables)}
    proc = subprocess.run(
        [*args, *jobs], cwd=root, env=env, capture_output=True, text=True, timeout=1200
    )
    # Its exit code says little (0 even when a job fails): read each job's status line.
    out = re.sub(r"\x1b\[[0-9;]*m", "", proc.stdout + proc.stderr)
    statuses = {}
    for line in out.splitlines():
        m = STATUS.match(line)
        if m:
            statuses[m.group(2)] = m.group(1)
    return statuses, out


def mr_variables(api_url: str, **extra: str) -> dict[str, str]:
    return {
        "CI_PIPELINE_SOURCE": "merge_request_event",
        "CI_MERGE_REQUEST_IID": "3",
        "CI_PROJECT_ID": "12",
        "CI_API_V4_URL": f"{api_url}/api/v4",
        **extra,
    }


def dotenv(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if line)


def test_component_renders_an_inconclusive_gate_with_an_mr_note(
    gcl: str, workdir: Path, api: tuple[str, Any]
) -> None:
    """Before the fix the job printed "could not decide (exit 5 ...)": no dotenv, no note."""
    url, state = api
    (workdir / "templates").mkdir()
    shutil.copy(REPO / "templates/ci-compress.yml", workdir / "templates/ci-compress.yml")
    write_config(workdir, base_config(thresholds=INCONCLUSIVE))
    (workdir / ".gitlab-ci.yml").write_text(
        "include:\n"
        "  - component: $CI_SERVER_FQDN/$CI_PROJECT_PATH/ci-compress@$CI_COMMIT_SHA\n"
        "    inputs:\n"
        "      install: false\n"
        "      config: compress.yaml\n"
        "      report-dir: out\n"
    )
    gitlab_project(workdir)
    statuses, out = run_pipeline(
        gcl, workdir, clean_env(), mr_variables(url, CI_COMPRESS_GITLAB_TOKEN="glpat-secret")
    )
    assert statuses == {"ci-compress": "FAIL"}, out
    assert "FAIL 5" in out and "ci-compress: the gate was inconclusive" in out
    assert "could not run" not in out and "glpat-secret" not in out
    env = dotenv(workdir / "out/ci-compress.env")
    assert env["CI_COMPRESS_STATE"] == "inconclusive" and env["CI_COMPRESS_PASSED"] == "false"
    (note,) = state.notes[("12", "3")]
    assert "INCONCLUSIVE" in note["body"] and note["body"].startswith("<!-- ci-compress:report")


def test_two_gates_from_the_include_template_keep_their_own_dotenv(gcl: str, workdir: Path) -> None:
    """Per-job dotenv prefixes (before: both wrote CI_COMPRESS_*); fail-on: never; the
    hint for an absent token says masked, not protected."""
    (workdir / "pipelines/gitlab").mkdir(parents=True)
    shutil.copy(
        REPO / "pipelines/gitlab/ci-compress.gitlab-ci.yml",
        workdir / "pipelines/gitlab/ci-compress.gitlab-ci.yml",
    )
    write_config(workdir, base_config(thresholds={"max_accuracy_drop": 5.0}), "pass.yaml")
    write_config(workdir, base_config(thresholds={"min_compression_ratio": 1000.0}), "fail.yaml")
    include = []
    for job, cfg in (("gate-int8", "pass.yaml"), ("gate-tiny", "fail.yaml")):
        include.append(
            {
                "local": "pipelines/gitlab/ci-compress.gitlab-ci.yml",
                "inputs": {
                    "job-name": job,
                    "config": cfg,
                    "report-dir": f"out-{job}",
                    "install": False,
                    "fail-on": "never" if job == "gate-tiny" else "fail",
                },
            }
        )
    (workdir / ".gitlab-ci.yml").write_text(yaml.safe_dump({"include": include}))
    gitlab_project(workdir)
    statuses, out = run_pipeline(
        gcl, workdir, clean_env(), mr_variables("http://127.0.0.1:9", CI_PROJECT_ID="12")
    )
    assert statuses == {"gate-int8": "PASS", "gate-tiny": "PASS"}, out
    a = dotenv(workdir / "out-gate-int8/ci-compress.env")
    b = dotenv(workdir / "out-gate-tiny/ci-compress.env")
    assert a["GATE_INT8_STATE"] == "pass" and a["GATE_INT8_PASSED"] == "true"
    assert b["GATE_TINY_STATE"] == "fail" and b["GATE_TINY_PASSED"] == "false"
    assert not any(k.startswith("CI_COMPRESS_") for k in {**a, **b})
    assert "masked but NOT protected" in out  # no token variable: the hint


def test_job_script_runs_under_posix_sh(workdir: Path, tmp_path: Path) -> None:
    """The job script as GitLab Runner runs it where the image has no bash: under dash
    (`set -e`, then each script entry). Before the fix `<<<` and `read -a` broke it."""
    dash = require_tool("dash")
    write_config(workdir, base_config(thresholds={"min_compression_ratio": 1000.0}))
    for path in TEMPLATES:
        _spec, jobs = yaml.safe_load_all((REPO / path).read_text())
        (job,) = jobs.values()
        for block in job["script"]:
            check = subprocess.run([dash, "-n", "-c", block], capture_output=True, text=True)
            assert check.returncode == 0, f"{path}: not POSIX sh: {check.stderr}\n{block}"
    _spec, jobs = yaml.safe_load_all((REPO / TEMPLATES[0]).read_text())
    (job,) = jobs.values()
    values = {
        "inputs.working-directory": ".",
        "inputs.config": "compress.yaml",
        "inputs.report-dir": "out",
        "inputs.fail-on": "fail",
        "inputs.install": "true",
        "inputs.mr-note": "true",
        "inputs.token-variable": "CI_COMPRESS_GITLAB_TOKEN",
        "inputs.package": str(copy_checkout(tmp_path / "ci-compress-src")),
        "inputs.pip-args": "--no-deps --no-build-isolation -e " + str(tmp_path / "no*glob"),
    }
    variables = {}
    for k, v in job["variables"].items():
        v = re.sub(r"\$\[\[\s*([\w.-]+)\s*\]\]", lambda m: values.get(m.group(1), ""), str(v))
        variables[k] = v.replace("$CI_PROJECT_DIR", str(workdir))
    variables["CI_COMPRESS_TORCH_SPEC"] = "torch==2.13.0"
    variables["CI_COMPRESS_TORCH_INDEX_URL"] = "https://download.pytorch.org/whl/cpu"
    # pip-args are split on whitespace and never globbed: a folder named literally no*glob
    (tmp_path / "no*glob").mkdir()
    (tmp_path / "no*glob" / "setup.py").write_text(
        "from setuptools import setup\nsetup(name='literal-glob', version='0.1', py_modules=[])\n"
    )
    bin_dir = fresh_venv(tmp_path / "image-python")
    env = clean_env(path_first=bin_dir, **variables, CI_JOB_NAME="ci-compress")
    env["PYTHONPATH"] = SITE_PACKAGES
    script = "set -e\n" + "\n".join(job["script"])
    proc = subprocess.run(
        [dash, "-c", script], cwd=workdir, env=env, capture_output=True, text=True, timeout=900
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-4000:]  # the gate failed: the renderer's exit code
    assert "Requirement already satisfied: torch==2.13.0" in out
    assert "Successfully installed ci-compress-0.1.0" in out and "literal-glob" in out
    assert "ci-compress: not a merge request pipeline; no MR note" in out
    assert dotenv(workdir / "out/ci-compress.env")["CI_COMPRESS_STATE"] == "fail"


def test_missing_install_is_exit_127_not_gate_failed(workdir: Path, tmp_path: Path) -> None:
    dash = require_tool("dash")
    write_config(workdir, base_config())
    _spec, jobs = yaml.safe_load_all((REPO / TEMPLATES[1]).read_text())
    (job,) = jobs.values()
    bin_dir = fresh_venv(tmp_path / "image-python")
    env = clean_env(path_first=bin_dir, CI_COMPRESS_INSTALL="false", CI_JOB_NAME="ci-compress")
    env["PYTHONPATH"] = SITE_PACKAGES
    proc = subprocess.run(
        [dash, "-c", "set -e\n" + "\n".join(job["script"])],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 127, proc.stdout + proc.stderr
    assert "ci-compress is not installed for 'python' in this image (exit 127)" in proc.stdout
    assert not (workdir / "ci-compress-report").exists()


def test_the_repositorys_own_pipeline_runs_the_component_from_this_commit(
    gcl: str, tmp_path: Path
) -> None:
    """.gitlab-ci.yml as GitLab would run it on a merge request: the demo model, then the
    component at $CI_COMMIT_SHA installing this commit's ci-compress and pinned CPU torch."""
    root = copy_checkout(tmp_path / "project")
    shutil.copy(REPO / ".gitlab-ci.yml", root / ".gitlab-ci.yml")
    gitlab_project(root)
    bin_dir = fresh_venv(tmp_path / "image-python")
    env = clean_env(path_first=bin_dir)
    env["PYTHONPATH"] = SITE_PACKAGES
    # gitlab-ci-local's shell mode names /builds/<path> as CI_PROJECT_DIR but runs in the
    # checkout: say where the checkout is, as a runner does.
    variables = {"CI_PIPELINE_SOURCE": "merge_request_event", "CI_PROJECT_DIR": str(root)}
    statuses, out = run_pipeline(gcl, root, env, variables)
    assert statuses == {"demo-model": "PASS", "component-gate": "PASS"}, out[-6000:]
    assert "release-to-catalog" not in statuses  # tags only
    assert "Requirement already satisfied: torch==2.13.0" in out
    assert "Successfully installed ci-compress-0.1.0" in out
    assert "ci-compress: the gate passed" in out
    assert dotenv(root / "gate-demo/ci-compress-report/ci-compress.env")["COMPONENT_GATE_STATE"]


def test_release_job_refuses_a_tag_the_templates_do_not_pin(tmp_path: Path) -> None:
    dash = require_tool("dash")
    pipeline = yaml.safe_load((REPO / ".gitlab-ci.yml").read_text())
    script = "set -e\n" + "\n".join(pipeline["release-to-catalog"]["script"])
    version = release_archive().rsplit("/v", 1)[1].removesuffix(".tar.gz")
    for tag, ok in ((version, True), ("9.9.9", False)):
        proc = subprocess.run(
            [dash, "-c", script], cwd=REPO, env={"CI_COMMIT_TAG": tag, "PATH": "/usr/bin:/bin"},
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert (proc.returncode == 0) is ok, proc.stdout + proc.stderr
    assert pipeline["release-to-catalog"]["release"]["tag_name"] == "$CI_COMMIT_TAG"


def test_repo_pipeline_validates_offline(tmp_path: Path) -> None:
    results = check_documents("vendor.gitlab-ci", REPO / ".gitlab-ci.yml", tmp_path)
    assert results and all(r.returncode == 0 for r in results), [r.stdout for r in results]


def test_templates_pin_this_release_and_cpu_torch() -> None:
    for path in TEMPLATES:
        spec, _jobs = yaml.safe_load_all((REPO / path).read_text())
        inputs = spec["spec"]["inputs"]
        assert inputs["package"]["default"] == release_archive(), path
        assert inputs["torch-spec"]["default"] == "torch==2.13.0"
        assert inputs["torch-index-url"]["default"] == "https://download.pytorch.org/whl/cpu"
        assert "not protected" in inputs["token-variable"]["description"]
    assert json.dumps(release_archive()).count("/v") == 1 and sys.version_info >= (3, 11)
