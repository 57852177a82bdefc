"""Shared by the tune tests: a config's resolved search space, and a study's trials."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import yaml

from ci_compress.config import parse_config_text
from ci_compress.tuning.space import resolve


def resolve_space(tmp_path: Path, config: dict[str, Any]) -> Any:
    """The search space ``ci-compress tune`` would build from ``config``."""
    loaded = parse_config_text(yaml.safe_dump(config), base_dir=tmp_path)
    assert loaded.config.tune is not None
    return resolve(loaded, loaded.config.tune)


def study_trials(folder: Path, study: str) -> list[optuna.trial.FrozenTrial]:
    """The trials of ``study`` in the sqlite store tune writes in ``folder``."""
    storage = f"sqlite:///{folder / 'ci-compress-tune.db'}"
    return optuna.load_study(study_name=study, storage=storage).get_trials()
