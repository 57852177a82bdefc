"""Re-run a recorded gate from its manifest and say whether it comes out the same.

The manifest (``report.json`` → ``reproducibility``, or ``manifest.json``) holds the
config text, so the gate can be run again from it alone: relative paths resolve
against the original config folder (``--base-dir`` overrides it when the files moved),
the student and reports go into a fresh directory and nothing is recorded in MLflow.
Then every digest (model artifact, holdout samples, config, shipped student) and every
deterministic measurement (accuracy, correct counts, bytes, parameter counts, per-class
counts, the verdict) is compared exactly; latency is excluded (it measures the machine,
not the model). Differences in library versions or CPU are listed, since they explain
a mismatch, but are not mismatches themselves.
"""

from __future__ import annotations

import dataclasses
import re
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ci_compress import pipeline
from ci_compress.config import ExplainConfig, apply_overrides, parse_config_text
from ci_compress.errors import ConfigError, InputError
from ci_compress.reproducibility import package_versions, reproducible
from ci_compress.tracking import NullTracker, download_run_file

RUN_ID_RE = re.compile(r"^(?:runs:/)?([0-9a-f]{32})/?$")


@dataclass(frozen=True)
class Comparison:
    name: str
    kind: str  # digest | measurement | verdict
    expected: Any
    actual: Any
    matched: bool


@dataclass
class ReproduceResult:
    matched: bool
    comparisons: list[Comparison]
    environment_changes: list[str]
    workdir: Path
    source: str
    notes: list[str] = field(default_factory=list)

    @property
    def mismatches(self) -> list[Comparison]:
        return [c for c in self.comparisons if not c.matched]

    def to_dict(self) -> dict[str, Any]:
        return {
            "matched": self.matched,
            "source": self.source,
            "workdir": str(self.workdir),
            "comparisons": [dataclasses.asdict(c) for c in self.comparisons],
            "environment_changes": self.environment_changes,
            "notes": self.notes,
        }


def locate(
    target: str, *, tracking_uri: str | None, environ: Mapping[str, str], dest: Path
) -> tuple[Path, str]:
    """A local report path for ``target``: a file, or an MLflow run id downloaded to ``dest``."""
    p = Path(target)
    if p.is_dir() and (p / "report.json").exists():
        return p / "report.json", str(p / "report.json")
    if p.exists():
        return p, str(p)
    m = RUN_ID_RE.match(target)
    if not m:
        raise InputError(
            f"{target!r} is neither a report file nor an MLflow run id",
            hint="give the path of a report.json / manifest.json, or a 32-hex-digit MLflow run id",
        )
    uri = tracking_uri or environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise ConfigError(
            "reproducing an MLflow run needs a tracking URI",
            hint="pass --tracking-uri or set MLFLOW_TRACKING_URI",
        )

    run_id = m.group(1)
    return download_run_file(uri, run_id, "report.json", dest), f"MLflow run {run_id}"


def reproduce(
    manifest: dict[str, Any],
    *,
    workdir: Path | None = None,
    base_dir: Path | None = None,
    source: str = "<manifest>",
    progress: Callable[[str], None] | None = None,
) -> ReproduceResult:
    """Re-run the gate the manifest describes in a fresh directory and compare."""

    base = base_dir or Path(manifest["config"]["base_dir"])
    if not base.is_dir():
        raise InputError(
            f"the original config folder {base} does not exist here",
            hint="pass --base-dir with the folder the config's relative paths refer to",
        )
    loaded = parse_config_text(manifest["config"]["text"], base_dir=base)
    # The gate ran with these on top of the text (``run --fast``): so does the re-run.
    loaded = apply_overrides(loaded, manifest["config"].get("overrides") or {})
    # The re-run only measures: no explain, no MLflow run.
    loaded = dataclasses.replace(
        loaded,
        config=loaded.config.model_copy(update={"explain": ExplainConfig.model_validate({})}),
    )
    if workdir is None:
        workdir = Path(tempfile.mkdtemp(prefix="ci-compress-reproduce-"))
    elif workdir.exists() and any(workdir.iterdir()):
        raise ConfigError(
            f"--workdir {workdir} is not empty", hint="reproduce runs in a fresh, empty directory"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    report = pipeline.run(loaded, tracker=NullTracker(), report_dir=workdir, progress=progress)
    new = report.reproducibility

    comparisons: list[Comparison] = []
    for key, old_value in sorted(manifest["digests"].items()):
        new_value = new["digests"].get(key)
        comparisons.append(Comparison(key, "digest", old_value, new_value, old_value == new_value))
    old_m = manifest["expected"]["measurements"]
    new_m = reproducible(new["expected"]["measurements"])
    for key in sorted(set(old_m) | set(new_m)):
        a, b = old_m.get(key), new_m.get(key)
        comparisons.append(Comparison(key, "measurement", a, b, a == b))
    old_pc = manifest["expected"].get("per_class_correct", {})
    new_pc = new["expected"].get("per_class_correct", {})
    for label in sorted(set(old_pc) | set(new_pc), key=_label_sort):
        a, b = old_pc.get(label), new_pc.get(label)
        comparisons.append(Comparison(f"class {label} correct", "measurement", a, b, a == b))
    old_v, new_v = manifest["expected"].get("verdict"), new["expected"].get("verdict")
    comparisons.append(Comparison("verdict", "verdict", old_v, new_v, old_v == new_v))

    changes = []
    now = package_versions()
    for name, old_version in sorted(manifest.get("versions", {}).items()):
        if now.get(name) != old_version:
            changes.append(f"{name} {old_version} -> {now.get(name)}")
    old_machine, new_machine = manifest.get("machine", {}), new.get("machine", {})
    for key in ("cpu_model", "threads", "machine"):
        if old_machine.get(key) != new_machine.get(key):
            changes.append(f"{key} {old_machine.get(key)} -> {new_machine.get(key)}")
    return ReproduceResult(
        matched=all(c.matched for c in comparisons),
        comparisons=comparisons,
        environment_changes=changes,
        workdir=workdir,
        source=source,
    )


def _label_sort(label: str) -> tuple[int, int | str]:
    return (0, int(label)) if label.lstrip("-").isdigit() else (1, label)


def render(result: ReproduceResult) -> str:
    """Terminal text: the verdict line, every mismatch, then environment changes."""
    word = "MATCHES" if result.matched else "DOES NOT MATCH"
    digests = [c for c in result.comparisons if c.kind == "digest"]
    measured = [c for c in result.comparisons if c.kind != "digest"]
    lines = [
        f"ci-compress reproduce: the re-run {word} {result.source}",
        f"  digests: {sum(c.matched for c in digests)}/{len(digests)} equal; "
        f"measurements: {sum(c.matched for c in measured)}/{len(measured)} equal "
        "(exact; latency excluded)",
    ]
    for c in result.comparisons:
        if c.kind == "digest":
            lines.append(
                f"  [{'ok' if c.matched else 'DIFF'}] {c.name} sha256 {str(c.expected)[:12]}"
                + ("" if c.matched else f" -> {str(c.actual)[:12]}")
            )
    for c in result.mismatches:
        if c.kind != "digest":
            lines.append(f"  [DIFF] {c.name}: recorded {c.expected!r}, now {c.actual!r}")
    for change in result.environment_changes:
        lines.append(f"  environment: {change}")
    lines.append(f"  re-run in: {result.workdir}")
    return "\n".join(lines)
