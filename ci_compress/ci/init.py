"""``ci-compress init``: a starter compress.yaml and the CI provider's file beside it.

The files come from ``ci_compress/ci/starters/`` (package data). The starter config is
validated before anything is written, and nothing is overwritten without ``force``.
The report folder (it holds the shipped student) is added to ``.gitignore``, so a
``git add -A`` after a local run or the pre-push hook never commits it.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from ci_compress.config import parse_config_text
from ci_compress.errors import ConfigError
from ci_compress.files import atomic_write

# Where users take the action / component from; edit the generated file if you host
# ci-compress elsewhere.
ACTION_REF = "ci-compress/ci-compress@v0.1.0"
COMPONENT_REF = "$CI_SERVER_FQDN/ci-compress/ci-compress/ci-compress@0.1.0"

# provider -> (starter file, path written in the repository)
PROVIDER_FILES: dict[str, tuple[str, str]] = {
    "github": ("github.yml", ".github/workflows/model-gate.yml"),
    "gitlab": ("gitlab-ci.yml", ".gitlab-ci.yml"),
    "jenkins": ("Jenkinsfile", "Jenkinsfile"),
    "pre-commit": ("pre-commit-config.yaml", ".pre-commit-config.yaml"),
}
CONFIG_FILE = "compress.yaml"
REPORT_DIR = "ci-compress-report"  # report.dir in the starter compress.yaml


def starter(name: str) -> str:
    text = resources.files("ci_compress.ci").joinpath("starters", name).read_text(encoding="utf-8")
    return text.replace("{action}", ACTION_REF).replace("{component}", COMPONENT_REF)


def planned(provider: str) -> dict[Path, str]:
    """Relative path -> text of every file ``init`` writes for ``provider``."""
    if provider not in PROVIDER_FILES:
        raise ConfigError(
            f"unknown provider {provider!r}", hint=f"one of {', '.join(PROVIDER_FILES)}"
        )
    name, dest = PROVIDER_FILES[provider]
    return {Path(CONFIG_FILE): starter(CONFIG_FILE), Path(dest): starter(name)}


def write_starter(provider: str, target: Path, *, force: bool = False) -> list[Path]:
    """Write the starter files under ``target``; refuse to overwrite unless ``force``."""

    files = planned(provider)
    parse_config_text(files[Path(CONFIG_FILE)], source=Path(CONFIG_FILE), base_dir=target)
    existing = [target / p for p in files if (target / p).exists()]
    if existing and not force:
        names = ", ".join(str(p) for p in existing)
        verb = "exists" if len(existing) == 1 else "exist"
        raise ConfigError(f"{names} already {verb}; pass --force to overwrite")
    written = []
    for rel, text in files.items():
        atomic_write(target / rel, text)
        written.append(target / rel)
    ignore = ignore_folder(target, REPORT_DIR)
    if ignore is not None:
        written.append(ignore)
    return written


def ignore_folder(target: Path, folder: str) -> Path | None:
    """Add ``folder/`` to ``target/.gitignore`` unless a line already names it; returns
    the .gitignore path when it was changed."""
    path = target / ".gitignore"
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    names = {line.strip().strip("/") for line in text.splitlines()}
    if folder.strip("/") in names:
        return None
    sep = "" if not text or text.endswith("\n") else "\n"
    note = "# ci-compress reports and the shipped student (ci-compress init)\n"
    atomic_write(path, f"{text}{sep}{note}{folder.strip('/')}/\n")
    return path
