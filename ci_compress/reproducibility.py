"""The reproducibility manifest: what a gate needs to be run again, and what it measured.

Every run writes ``manifest.json`` beside ``report.json`` (and embeds it there under
``reproducibility``): the library versions, Python, CPU model and thread count, the
seeds, the sha256 of the model artifact, of the holdout samples, of the config and of
the shipped student, the config text itself (so the gate can be re-run from the
manifest alone), the pass history and the deterministic measurements.
``ci-compress reproduce`` (:mod:`ci_compress.reproduce`) re-runs the gate from it and
compares.

Versions are read by :func:`ci_compress.versions.versions` (installed metadata, so
recording them imports nothing heavy: mlflow in particular is imported only by
:mod:`ci_compress.tracking`).
"""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ci_compress.config import LoadedConfig, dump_yaml, to_mapping
from ci_compress.errors import InputError
from ci_compress.files import text_sha256
from ci_compress.report import read_report_json
from ci_compress.versions import versions

if TYPE_CHECKING:
    from ci_compress.evaluation.classes import PerClass

MANIFEST_VERSION = 1

# Distribution names whose versions can change a measurement.
PACKAGES = (
    "ci-compress",
    "torch",
    "numpy",
    "mlflow",
    "safetensors",
    "zstandard",
    "scikit-learn",
)

# Measurements that must reproduce exactly (latency and time-based figures are excluded:
# they depend on the machine's load, not on the model).
EXCLUDED_MEASUREMENTS = (
    "latency_ms",
    "latency_ratio",
    "latency_ratio_ci_low",
    "latency_ratio_ci_high",
)


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages that matter (None when not installed)."""
    out = versions(PACKAGES)
    if out.get("mlflow") is None:  # the runtime may use mlflow-skinny
        skinny = versions(["mlflow-skinny"])
        if skinny["mlflow-skinny"] is not None:
            out.update(skinny)
    out.update(versions(["python"]))
    return out


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what :mod:`platform` knows."""
    try:
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def reproducible(measurements: Mapping[str, float]) -> dict[str, float]:
    """The measurements expected to repeat exactly (no latency)."""
    return {
        k: float(v)
        for k, v in sorted(measurements.items())
        if not k.endswith(EXCLUDED_MEASUREMENTS)
    }


def build_manifest(
    loaded: LoadedConfig,
    *,
    model_file: str,
    model_sha256: str,
    holdout_name: str,
    holdout_sha256: str,
    holdout_samples: int,
    student_sha256: str,
    pass_history: list[dict[str, Any]],
    measurements: Mapping[str, float],
    per_class: PerClass | None,
    verdict: str,
) -> dict[str, Any]:
    """The manifest of one gate run (plain JSON-able dict).

    ``config.text`` is the config as read (its ``${NAME}`` references unresolved), or,
    for a config built in Python, an equivalent YAML. Command-line overrides applied
    after reading (``run --fast``) are recorded beside it as ``config.overrides``.
    """
    cfg = loaded.config
    text = loaded.text
    if text is None:  # built in Python, not read from a file: store an equivalent YAML
        text = dump_yaml(to_mapping(cfg, exclude_defaults=True))
    config: dict[str, Any] = {
        "file": str(loaded.source) if loaded.source else None,
        "base_dir": str(loaded.base_dir),
        "text": text,
        "text_sha256": text_sha256(text),
    }
    if loaded.overrides:
        config["overrides"] = dict(loaded.overrides)
    return {
        "manifest_version": MANIFEST_VERSION,
        "versions": package_versions(),
        "machine": {
            "platform": platform.platform(),
            "machine": platform.machine(),
            "cpu_model": cpu_model(),
            "cpu_count": os.cpu_count(),
            "threads": cfg.runtime.threads,
        },
        "seeds": {
            "runtime.seed": cfg.runtime.seed,
            "passes": [cfg.runtime.seed + i for i in range(len(cfg.passes))],
        },
        "digests": {
            "model": model_sha256,
            "holdout": holdout_sha256,
            "config": loaded.sha256,
            "student": student_sha256,
        },
        "model": {"file": model_file},
        "holdout": {"name": holdout_name, "samples": holdout_samples},
        "config": config,
        "passes": [{k: v for k, v in p.items() if k != "seconds"} for p in pass_history],
        "expected": {
            "verdict": verdict,
            "measurements": reproducible(measurements),
            "per_class_correct": {
                row.label: dict(row.correct) for row in (per_class.classes if per_class else ())
            },
        },
    }


def read_reproducibility_manifest(path: Path) -> dict[str, Any]:
    """The manifest inside a report.json, or a manifest.json itself, checked before a re-run."""
    data = read_report_json(
        path, hint="give the report.json of a ci-compress run, or an MLflow run id"
    )
    manifest = data.get("reproducibility", data) if isinstance(data, dict) else None
    if not isinstance(manifest, dict) or "manifest_version" not in manifest:
        raise InputError(
            f"{path} holds no reproducibility manifest",
            hint="reports written by ci-compress 0.1 with the manifest have a 'reproducibility' section; re-run the gate to get one",
        )
    text = manifest.get("config", {}).get("text")
    if not isinstance(text, str):
        raise InputError(f"{path}: the manifest holds no config text; it cannot be re-run")
    if text_sha256(text) != manifest["config"].get("text_sha256"):
        raise InputError(
            f"{path}: the config text in the manifest does not match its recorded sha256",
            hint="the manifest was edited; use the report as the gate wrote it",
        )
    return manifest
