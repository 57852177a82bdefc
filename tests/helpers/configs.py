"""Gate configs for tests: the demo MLP (and CNN) with fast settings, written as YAML."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def base_config(**overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "version": 1,
        "model": {
            "path": "digits_mlp.safetensors",
            "factory": "ci_compress.demo.models:digits_mlp",
        },
        "data": {"holdout": {"builtin": "digits", "split": "test"}},
        "passes": [{"type": "prune", "amount": 0.5}, {"type": "quantize"}],
        "thresholds": {"max_accuracy_drop": 2.0},
        "mlflow": {"enabled": False},
        "report": {"dir": "report"},
        "runtime": {"latency_repeats": 3, "latency_warmup": 1},
    }
    for key, value in overrides.items():
        config[key] = value
    return config


def cnn_config(**overrides: Any) -> dict[str, Any]:
    """base_config for the demo CNN."""
    return base_config(
        model={"path": "digits_cnn.safetensors", "factory": "ci_compress.demo.models:digits_cnn"},
        **overrides,
    )


def write_config(folder: Path, config: dict[str, Any], name: str = "compress.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
