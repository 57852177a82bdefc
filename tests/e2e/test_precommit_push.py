"""pre-commit for real: the ci-compress-system hook from this project's
.pre-commit-hooks.yaml, installed as a pre-push hook, refuses a `git push` to a local bare
remote when the gate fails and lets it through when the gate passes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO
from tests.helpers.configs import base_config, write_config


def _git(
    *args: str, cwd: Path, env: dict[str, str], check: bool = True
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=check, timeout=600
    )


@pytest.mark.slow
def test_pre_push_hook_refuses_a_failing_gate_and_allows_a_passing_one(
    tmp_path: Path, demo_dir: Path
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(
            ("GITHUB_", "GITLAB", "CI_", "JENKINS", "MLFLOW_", "GIT_", "PRE_COMMIT")
        )
    }
    env.update(
        HOME=str(home),
        PATH=str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", ""),
        PYTHONPATH=str(REPO),
        PRE_COMMIT_HOME=str(tmp_path / "pre-commit-cache"),
        GIT_CONFIG_NOSYSTEM="1",
        GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.com",
        GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.com",
    )  # fmt: skip

    # a git repository holding this project's hook manifest, as `repo:` points at it
    hooks_repo = tmp_path / "ci-compress-hooks"
    hooks_repo.mkdir()
    shutil.copy(REPO / ".pre-commit-hooks.yaml", hooks_repo / ".pre-commit-hooks.yaml")
    _git("init", "-q", "-b", "main", cwd=hooks_repo, env=env)
    _git("add", ".", cwd=hooks_repo, env=env)
    _git("commit", "-q", "-m", "hooks", cwd=hooks_repo, env=env)
    rev = _git("rev-parse", "HEAD", cwd=hooks_repo, env=env).stdout.strip()

    remote = tmp_path / "remote.git"
    _git("init", "-q", "--bare", "-b", "main", str(remote), cwd=tmp_path, env=env)

    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(demo_dir / "digits_mlp.safetensors", project / "digits_mlp.safetensors")
    failing = base_config(thresholds={"max_accuracy_drop": 10.0, "min_compression_ratio": 1000.0})
    write_config(project, failing)
    (project / ".gitignore").write_text("report/\n")
    (project / ".pre-commit-config.yaml").write_text(
        yaml.safe_dump(
            {
                "repos": [
                    {"repo": str(hooks_repo), "rev": rev, "hooks": [{"id": "ci-compress-system"}]}
                ]
            }
        )
    )
    _git("init", "-q", "-b", "main", cwd=project, env=env)
    _git("remote", "add", "origin", str(remote), cwd=project, env=env)
    install = subprocess.run(
        [sys.executable, "-m", "pre_commit", "install", "--hook-type", "pre-push"],
        cwd=project, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert install.returncode == 0, install.stdout + install.stderr
    assert (project / ".git" / "hooks" / "pre-push").is_file()
    _git("add", ".", cwd=project, env=env)
    _git("commit", "-q", "-m", "model and gate", cwd=project, env=env)

    refused = _git("push", "origin", "main", cwd=project, env=env, check=False)
    out = refused.stdout + refused.stderr
    assert refused.returncode != 0, out
    assert "ci-compress gate (fast, project environment)" in out and "Failed" in out
    assert "min_compression_ratio" in out
    assert _git("ls-remote", str(remote), cwd=project, env=env).stdout.strip() == ""
    report = yaml.safe_load((project / "report" / "report.json").read_text())
    assert report["holdout"]["samples"] == 200 and report["verdict"] == "fail"  # --fast

    passing = base_config(thresholds={"max_accuracy_drop": 10.0, "min_compression_ratio": 2.0})
    write_config(project, passing)
    _git("commit", "-q", "-am", "a gate the student meets", cwd=project, env=env)
    allowed = _git("push", "origin", "main", cwd=project, env=env, check=False)
    out = allowed.stdout + allowed.stderr
    assert allowed.returncode == 0, out
    assert "ci-compress gate (fast, project environment)" in out and "Passed" in out
    head = _git("rev-parse", "HEAD", cwd=project, env=env).stdout.strip()
    assert _git("rev-parse", "main", cwd=remote, env=env).stdout.strip() == head
