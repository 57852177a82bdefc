"""``tune.max_trials: 1`` runs exactly one trial: the config's own passes."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml

from tests.conftest import base_config, run_cli, write_config


@pytest.mark.slow
@pytest.mark.parametrize("how", ["config", "--trials"])
def test_a_budget_of_one_runs_the_base_config(workdir: Path, how: str) -> None:
    tune = {"space": {"passes[0].amount": {"low": 0.3, "high": 0.6}}}
    tune["max_trials"] = 1 if how == "config" else 5
    cfg = write_config(workdir, base_config(tune=tune))
    args = ["--trials", "1"] if how == "--trials" else []
    proc = run_cli("tune", "--config", str(cfg), *args, "--quiet", cwd=workdir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    storage = f"sqlite:///{workdir / 'ci-compress-tune.db'}"
    trials = optuna.load_study(study_name="compress", storage=storage).get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE]
    assert trials[0].user_attrs["passes"] == [
        {"type": "prune", "amount": 0.5},
        {"type": "quantize"},
    ]
    assert yaml.safe_load((workdir / "tuned.yaml").read_text())["passes"][0]["amount"] == 0.5
    # the budget is spent: running again adds nothing
    proc = run_cli("tune", "--config", str(cfg), *args, "--quiet", cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    assert len(optuna.load_study(study_name="compress", storage=storage).get_trials()) == 1
