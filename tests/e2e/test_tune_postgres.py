"""One ``ci-compress tune`` study shared by four worker processes on a real PostgreSQL.

The docs recommend PostgreSQL for a study that many CI runners share; until now it was
only ever run on sqlite. The test suite starts its own server (initdb with trust
authentication into a temporary folder, listening on 127.0.0.1 only, stopped at the
end), runs four ``ci-compress tune`` processes against one study at once, and checks:
no trial is run twice, none is lost or left running, the budget holds, and the best
configuration equals that of a single-process run of the same seed.

It needs the PostgreSQL server binaries (``.ci/run`` installs Debian's ``postgresql``)
and the ``psycopg2`` driver; in CI (``CI=true``) their absence is a failure, not a skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import yaml

from tests.conftest import REPO, base_config, write_config
from tests.helpers.postgres import pg_bin, postgres_server

pytestmark = pytest.mark.slow

SPACE = {"passes[0].amount": {"choices": [0.5, 0.9]}}
TRIALS = 16


def _missing(what: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} is missing in CI: .ci/run must install it")
    pytest.skip(f"{what} is not installed")


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    """A PostgreSQL server on 127.0.0.1 for this module; yields a SQLAlchemy URL."""
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        _missing("the psycopg2 driver (pip install psycopg2-binary)")
    bin_dir = pg_bin()
    if bin_dir is None:
        _missing("PostgreSQL (apt-get install postgresql)")
    assert bin_dir is not None
    with postgres_server(bin_dir) as url:
        yield url


def _tune(
    cfg: Path, storage: str, study: str, *, workers: int
) -> list[subprocess.CompletedProcess[str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "GITHUB_", "CI_"))}
    env["PYTHONPATH"] = str(REPO)
    cmd = [
        sys.executable,
        "-m",
        "ci_compress",
        "tune",
        "--config",
        str(cfg),
        "--storage",
        storage,
        "--study",
        study,
        "--quiet",
    ]
    procs = [
        subprocess.Popen(
            cmd, cwd=cfg.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(workers)
    ]
    done = []
    for p in procs:
        out, err = p.communicate(timeout=900)
        done.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return done


def _best(cfg: Path) -> dict[str, object]:
    tuned = yaml.safe_load((cfg.parent / "tuned.yaml").read_text())
    return {"passes": tuned["passes"]}


def test_four_workers_share_one_study_on_postgres(
    postgres: str, tmp_path: Path, demo_dir: Path
) -> None:
    config = base_config(
        tune={"space": SPACE, "optional_passes": [], "max_trials": TRIALS, "seed": 0}
    )
    cfgs = {}
    for name in ("multi", "single"):
        folder = tmp_path / name
        folder.mkdir()
        shutil.copy(demo_dir / "digits_mlp.safetensors", folder)
        cfgs[name] = write_config(folder, config)

    runs = _tune(cfgs["multi"], postgres, "shared", workers=4)
    for r in runs:
        assert r.returncode == 0, r.stderr
    trials = optuna.load_study(study_name="shared", storage=postgres).get_trials(deepcopy=False)
    counted = [t for t in trials if not t.user_attrs.get("over_budget")]
    # the budget holds and nothing is lost: exactly TRIALS trials inside it, all finished
    assert len(counted) == TRIALS
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    assert all(t.state in finished for t in counted), [(t.number, t.state) for t in counted]
    unfinished = (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)
    assert not [t.number for t in trials if t.state in unfinished]
    # no trial run twice: each number once, each by one worker process
    assert len({t.number for t in trials}) == len(trials)
    assert all(len(t.user_attrs["worker"].split(":")) >= 3 for t in counted)
    workers = {t.user_attrs["worker"].split(":")[1] for t in counted}
    assert len(workers) >= 2, workers  # the work really was shared

    runs = _tune(cfgs["single"], postgres, "single", workers=1)
    assert runs[0].returncode == 0, runs[0].stderr
    assert _best(cfgs["multi"]) == _best(cfgs["single"])
