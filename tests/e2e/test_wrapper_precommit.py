"""The pre-commit hook as a developer meets it: `ci-compress init --provider pre-commit`,
this project's .pre-commit-hooks.yaml at a git rev, `pre-commit install --hook-type
pre-push` and a real `git push` to a local bare remote. Issue 17, item 6."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import base_config, run_cli, write_config
from tests.helpers.wrapper_tools import REPO, clean_env, require_tool

pytestmark = pytest.mark.slow


def git(*args: str, cwd: Path, env: dict[str, str], check: bool = True) -> str:
    proc = subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def test_default_hook_refuses_a_failing_push_and_leaves_nothing_to_commit(
    tmp_path: Path, demo_dir: Path
) -> None:
    """The default hook id (`ci-compress`, language: system) gates a real push; its report
    folder, which holds student.ccz, is ignored (init wrote .gitignore), so a `git add -A`
    after the push commits nothing. Before: `ci-compress` was the python hook (a torch
    venv built on first use) and init wrote no .gitignore entry."""
    require_tool("git")
    home = tmp_path / "home"
    home.mkdir()
    env = clean_env(
        HOME=str(home),
        PRE_COMMIT_HOME=str(tmp_path / "pre-commit-cache"),
        GIT_CONFIG_NOSYSTEM="1",
        GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.com",
        GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.com",
    )  # fmt: skip

    hooks_repo = tmp_path / "ci-compress"  # this project, as `repo:` sees it at a rev
    hooks_repo.mkdir()
    shutil.copy(REPO / ".pre-commit-hooks.yaml", hooks_repo / ".pre-commit-hooks.yaml")
    git("init", "-q", "-b", "main", cwd=hooks_repo, env=env)
    git("add", ".", cwd=hooks_repo, env=env)
    git("commit", "-q", "-m", "hooks", cwd=hooks_repo, env=env)
    rev = git("rev-parse", "HEAD", cwd=hooks_repo, env=env).strip()

    remote = tmp_path / "remote.git"
    git("init", "-q", "--bare", "-b", "main", str(remote), cwd=tmp_path, env=env)

    project = tmp_path / "project"
    project.mkdir()
    init = run_cli("init", "--provider", "pre-commit", cwd=project)
    assert init.returncode == 0, init.stderr
    assert "ci-compress-report/" in (project / ".gitignore").read_text().splitlines()
    shutil.copy(demo_dir / "digits_mlp.safetensors", project / "digits_mlp.safetensors")
    failing = base_config(thresholds={"max_accuracy_drop": 10.0, "min_compression_ratio": 1000.0})
    failing["report"] = {"dir": "ci-compress-report"}  # the starter's report.dir
    write_config(project, failing)
    (project / ".pre-commit-config.yaml").write_text(
        yaml.safe_dump(
            {"repos": [{"repo": str(hooks_repo), "rev": rev, "hooks": [{"id": "ci-compress"}]}]}
        )
    )
    git("init", "-q", "-b", "main", cwd=project, env=env)
    git("remote", "add", "origin", str(remote), cwd=project, env=env)
    install = subprocess.run(
        [sys.executable, "-m", "pre_commit", "install", "--hook-type", "pre-push"],
        cwd=project, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert install.returncode == 0, install.stdout + install.stderr
    git("add", ".", cwd=project, env=env)
    git("commit", "-q", "-m", "model and gate", cwd=project, env=env)

    refused = subprocess.run(
        ["git", "push", "origin", "main"], cwd=project, env=env,
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    out = refused.stdout + refused.stderr
    assert refused.returncode != 0, out
    assert "ci-compress gate (fast)" in out and "Failed" in out and "min_compression_ratio" in out
    assert "Installing environment" not in out  # language: system: no virtualenv, no torch
    assert git("ls-remote", str(remote), cwd=project, env=env).strip() == ""

    # The hook's output is in the work tree but ignored: nothing for `git add -A` to take.
    assert (project / "ci-compress-report" / "student.ccz").is_file()
    git("add", "-A", cwd=project, env=env)
    assert git("status", "--porcelain", cwd=project, env=env).strip() == ""

    passing = base_config(thresholds={"max_accuracy_drop": 10.0, "min_compression_ratio": 2.0})
    passing["report"] = {"dir": "ci-compress-report"}
    write_config(project, passing)
    git("commit", "-q", "-am", "a gate the student meets", cwd=project, env=env)
    allowed = subprocess.run(
        ["git", "push", "origin", "main"], cwd=project, env=env,
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    assert "Passed" in allowed.stdout + allowed.stderr
    git("add", "-A", cwd=project, env=env)
    assert git("status", "--porcelain", cwd=project, env=env).strip() == ""


def test_manifest_defaults_to_system_with_a_cpu_torch_python_variant() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pre_commit", "validate-manifest", str(REPO / ".pre-commit-hooks.yaml")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    hooks = {h["id"]: h for h in yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text())}
    assert hooks["ci-compress"]["language"] == "system"  # the documented default
    assert hooks["ci-compress-system"]["language"] == "system"  # the old id still works
    python = hooks["ci-compress-python"]
    assert python["language"] == "python"
    # pre-commit runs `pip install . <additional_dependencies...>`: the index option and
    # the torch pin reach pip as arguments (pre-commit/pre-commit#1316)
    assert python["additional_dependencies"] == [
        "--extra-index-url=https://download.pytorch.org/whl/cpu",
        "torch==2.13.0",
    ]
    for h in hooks.values():
        assert h["minimum_pre_commit_version"] == "3.2.0"  # the pre-push stage name
        assert h["stages"] == ["pre-push"]


def test_init_adds_the_report_folder_to_gitignore_once(tmp_path: Path) -> None:
    (tmp_path / ".gitignore").write_text("*.log")  # the user's own, without a final newline
    first = run_cli("init", "--provider", "pre-commit", cwd=tmp_path)
    assert first.returncode == 0 and "wrote .gitignore" in first.stdout
    again = run_cli("init", "--provider", "github", "--force", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    lines = (tmp_path / ".gitignore").read_text().splitlines()
    assert lines[0] == "*.log" and lines.count("ci-compress-report/") == 1
