"""The README's quick-start snippets work as pasted: each is read out of README.md and
run by its platform's stand-in (the GitHub one through the action's steps, the GitLab one
under gitlab-ci-local, the pre-commit one through `pre-commit validate-config`), and every
version they pin is this release. Issue 17, item 2."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.test_ci_files import check
from tests.e2e.test_wrapper_github import api, gate, github_env
from tests.e2e.test_wrapper_gitlab import dotenv, gitlab_project, run_pipeline
from tests.helpers.configs import base_config, write_config
from tests.helpers.wrapper_tools import (
    REPO,
    SITE_PACKAGES,
    clean_env,
    copy_checkout,
    fresh_venv,
    gitlab_ci_local,
    project_version,
)

pytestmark = pytest.mark.slow
DOCS = [REPO / "README.md", *sorted((REPO / "docs/ci").glob("*.md"))]


def blocks(path: Path, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", path.read_text(), flags=re.S | re.M)


def readme_block(lang: str, needle: str) -> str:
    (block,) = [b for b in blocks(REPO / "README.md", lang) if needle in b]
    return block


def test_every_snippet_pins_this_release() -> None:
    version = project_version()
    for path in DOCS:
        text = path.read_text()
        for ref in re.findall(r"ci-compress@v?(\d+\.\d+\.\d+)", text):
            assert ref == version, f"{path.name} pins {ref}, the release is {version}"
        for ref in re.findall(r"(?:rev|ref): v?(\d+\.\d+\.\d+)", text):
            assert ref == version, f"{path.name} pins {ref}, the release is {version}"
        assert not re.search(r"pip install\s+['\"]?ci-compress\b(?![-\w])", text), path.name
        assert "id: ci-compress-system" not in text or path.name == "pre-commit.md"


def test_readme_github_snippet_runs_through_the_action(workdir: Path, tmp_path: Path) -> None:
    snippet = readme_block("yaml", "uses: ci-compress/ci-compress@")
    workflow = tmp_path / "model-gate.yml"
    workflow.write_text(snippet)
    res = check("vendor.github-workflows", workflow)
    assert res.returncode == 0, res.stdout + res.stderr
    (step,) = [s for s in yaml.safe_load(snippet)["jobs"]["gate"]["steps"] if "with" in s]
    write_config(workdir, base_config(thresholds={"max_accuracy_drop": 5.0}))
    with api() as (url, state):
        # the snippet's inputs as written; only the install is the test machine's own
        result = gate(
            workdir,
            tmp_path,
            github_env(tmp_path, url),
            **{k: str(v) for k, v in step["with"].items()},
        )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.outputs["state"] == "pass" and len(state.comments[7]) == 1


def test_readme_gitlab_snippet_runs_under_gitlab_ci_local(workdir: Path, tmp_path: Path) -> None:
    gcl = gitlab_ci_local()
    snippet = readme_block("yaml", "component: $CI_SERVER_FQDN/")
    pipeline: dict[str, Any] = yaml.safe_load(snippet)
    for i, doc in enumerate([pipeline]):
        one = tmp_path / f"gitlab-{i}.yml"
        one.write_text(yaml.safe_dump(doc))
        res = check("vendor.gitlab-ci", one)
        assert res.returncode == 0, res.stdout + res.stderr
    (workdir / "templates").mkdir()
    shutil.copy(REPO / "templates/ci-compress.yml", workdir / "templates/ci-compress.yml")
    write_config(workdir, base_config(thresholds={"max_accuracy_drop": 5.0}))
    # `<group>` is where the component lives on your instance, `@0.1.0` its release: here
    # acme/ci-compress at this commit, so gitlab-ci-local resolves the include locally.
    pasted = snippet.replace("<group>/ci-compress", "acme/ci-compress")
    pasted = pasted.replace(f"@{project_version()}", "@$CI_COMMIT_SHA")
    (workdir / ".gitlab-ci.yml").write_text(pasted)
    gitlab_project(workdir)
    bin_dir = fresh_venv(tmp_path / "image-python")
    env = clean_env(path_first=bin_dir)
    env["PYTHONPATH"] = SITE_PACKAGES
    src = copy_checkout(tmp_path / "release-archive")  # stands in for the release archive
    variables = {
        "CI_PIPELINE_SOURCE": "merge_request_event",
        "CI_PROJECT_DIR": str(workdir),
        "CI_COMPRESS_PACKAGE": str(src),  # a pipeline variable overrides the job's
    }
    statuses, out = run_pipeline(gcl, workdir, env, variables)
    assert statuses == {"ci-compress": "PASS"}, out[-5000:]
    assert "Requirement already satisfied: torch==2.13.0" in out
    assert dotenv(workdir / "ci-compress-report/ci-compress.env")["CI_COMPRESS_STATE"] == "pass"


def test_readme_precommit_snippet_is_a_valid_config(tmp_path: Path) -> None:
    snippet = readme_block("yaml", "repo: https://github.com/ci-compress/ci-compress")
    cfg = tmp_path / ".pre-commit-config.yaml"
    cfg.write_text(snippet)
    proc = subprocess.run(
        [sys.executable, "-m", "pre_commit", "validate-config", str(cfg)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (hook,) = yaml.safe_load(snippet)["repos"][0]["hooks"]
    manifest = {h["id"]: h for h in yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text())}
    assert manifest[hook["id"]]["language"] == "system"


def test_readme_jenkins_snippet_uses_the_steps_arguments() -> None:
    snippet = readme_block("groovy", "ciCompress(")
    assert f"@Library('ci-compress@v{project_version()}') _" in snippet
    step = (REPO / "pipelines/jenkins/vars/ciCompress.groovy").read_text()
    for arg in re.findall(r"(\w+):\s*'", snippet.split("ciCompress(", 1)[1]):
        assert f"args.{arg}" in step, arg
