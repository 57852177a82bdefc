"""What the wrapper tests share: the platform tools, clean environments, fresh virtualenvs.

Each wrapper test runs the wrapper as its platform runs it, so it needs that platform's
stand-in: ``gitlab-ci-local`` (npm, pinned 4.70.0; 4.75.1 crashes on Node 20) with
``rsync``, ``groovy`` and a JDK, ``git`` and ``pre-commit``. ``.ci/run`` installs them; a
test that needs a missing tool FAILS in CI (``CI=true``) and skips with the reason only on
a developer's machine, so a wrapper test can never go silently missing from CI.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import NoReturn

import pytest

REPO = Path(__file__).resolve().parents[2]
# The test interpreter's site-packages: put on PYTHONPATH of a fresh virtualenv, it makes
# torch and every dependency visible (pip sees torch==2.13.0 as installed and never goes
# to an index) while ci_compress itself is absent until the wrapper installs it.
SITE_PACKAGES = sysconfig.get_paths()["purelib"]
GITLAB_CI_LOCAL_VERSION = "4.70.0"
STRIPPED = ("GITHUB_", "GITLAB", "CI_", "JENKINS", "MLFLOW_", "INPUT_", "PRE_COMMIT", "GIT_")
HOW_TO_INSTALL = {
    "gitlab-ci-local": f"npm install -g gitlab-ci-local@{GITLAB_CI_LOCAL_VERSION}",
    "rsync": "apt-get install rsync",
    "groovy": "apt-get install groovy",
    "java": "apt-get install default-jre-headless",
    "git": "apt-get install git",
    "dash": "apt-get install dash",
}


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def missing(message: str) -> NoReturn:
    """Something a test needs is not installed: a failure in CI, a skip elsewhere."""
    if in_ci():
        pytest.fail(f"CI=true and {message}: these tests must run in CI", pytrace=False)
    pytest.skip(message)


def require_tool(name: str) -> str:
    """The tool's path; a missing tool fails the test in CI and skips it elsewhere."""
    path = shutil.which(name)
    if path:
        return path
    how = HOW_TO_INSTALL.get(name, f"install {name}")
    missing(f"{name} is not installed ({how}); .ci/run installs it")


def java_home() -> str:
    """A JDK for groovy (JAVA_HOME, or the first one under /usr/lib/jvm)."""
    if os.environ.get("JAVA_HOME") and Path(os.environ["JAVA_HOME"], "bin", "java").exists():
        return os.environ["JAVA_HOME"]
    jvm = Path("/usr/lib/jvm")
    for d in sorted(jvm.glob("*")) if jvm.is_dir() else []:
        if (d / "bin" / "java").exists():
            return str(d)
    require_tool("java")
    return str(Path(shutil.which("java") or "/usr").resolve().parents[1])


def gitlab_ci_local() -> str:
    """gitlab-ci-local at the pinned version (and rsync, which it needs in shell mode)."""
    exe = require_tool("gitlab-ci-local")
    require_tool("rsync")
    version = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
    if version.stdout.strip() != GITLAB_CI_LOCAL_VERSION:
        pytest.fail(
            f"gitlab-ci-local {version.stdout.strip()} found, the tests pin "
            f"{GITLAB_CI_LOCAL_VERSION} (.ci/run installs it)",
            pytrace=False,
        )
    return exe


def clean_env(*, path_first: Path | None = None, **extra: str) -> dict[str, str]:
    """This machine's environment without CI/provider variables, the test interpreter's
    bin on PATH (``path_first`` before it) and this checkout on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(STRIPPED) and k != "CI"}
    bins = [str(Path(sys.executable).parent)]
    if path_first is not None:
        bins.insert(0, str(path_first))
    env["PATH"] = os.pathsep.join([*bins, env.get("PATH", "")])
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


def fresh_venv(dest: Path) -> Path:
    """A new virtualenv without ci-compress; returns its bin folder. Run it with
    ``PYTHONPATH=SITE_PACKAGES`` (see above) so installs need no index."""
    subprocess.run(
        [sys.executable, "-m", "virtualenv", "-q", str(dest)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return dest / "bin"


def copy_checkout(dest: Path) -> Path:
    """The files an integration installs ci-compress from (a checkout at its ref)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("action.yml", "pyproject.toml", "README.md", ".pre-commit-hooks.yaml"):
        shutil.copy(REPO / name, dest / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("ci_compress", "pipelines", "templates"):
        shutil.copytree(REPO / name, dest / name, ignore=ignore)
    return dest


def factory_package(dest: Path) -> Path:
    """A tiny package holding a model factory (what `-e .` installs in a user's repo)."""
    pkg = dest / "acme_models"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "models.py").write_text(
        "from ci_compress.demo.models import digits_mlp\n\n\n"
        "def build():\n    return digits_mlp()\n"
    )
    (dest / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=69"]\nbuild-backend = "setuptools.build_meta"\n\n'
        '[project]\nname = "acme-models"\nversion = "0.0.1"\n\n'
        '[tool.setuptools]\npackages = ["acme_models"]\n'
    )
    return dest


def project_version() -> str:
    import tomllib

    return str(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"])


def release_archive() -> str:
    """The source archive of this release's tag: the pinned default install."""
    return (
        f"https://github.com/ci-compress/ci-compress/archive/refs/tags/v{project_version()}.tar.gz"
    )
