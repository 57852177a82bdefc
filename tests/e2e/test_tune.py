"""ci-compress tune: the space is checked against the passes, the search finds a smaller
passing student than the single-pass defaults, studies are shared and resumable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from mlflow import MlflowClient

from ci_compress import pipeline
from ci_compress.config import load_config
from ci_compress.errors import ConfigError
from ci_compress.passes.registry import PASSES
from ci_compress.tuning.space import PROFILES, _fits
from tests.helpers import REPO
from tests.helpers.cli import run_cli, run_console
from tests.helpers.configs import base_config, write_config
from tests.helpers.servers import MlflowServer
from tests.helpers.tune import resolve_space, study_trials

SPACE = {
    "passes[0].amount": {"low": 0.3, "high": 0.95},
    "passes[0].scope": {"choices": ["global", "layer"]},
}


def tune_config(**tune: Any) -> dict[str, Any]:
    return base_config(tune={"space": SPACE, "optional_passes": [0, 1], **tune})


# ---------------------------------------------------------------- the space


@pytest.mark.parametrize(
    ("space", "message"),
    [
        (
            {"passes[0].amout": {"low": 0.1, "high": 0.5}},
            "tune.space.passes[0].amout: 0.1 does not fit the pass: passes[0].amout: unknown key; did you mean 'amount'?",
        ),
        (
            {"passes[0].amount": {"low": 0.5, "high": 1.5}},
            "tune.space.passes[0].amount: 1.5 does not fit the pass: passes[0].amount: must be in [0, 1), got 1.5",
        ),
        (
            {"passes[1].scheme": {"choices": ["int8-dynamic", "int3"]}},
            "tune.space.passes[1].scheme: 'int3' does not fit the pass: passes[1].scheme: must be one of",
        ),
        (
            {"passes[5].amount": {"low": 0.1, "high": 0.5}},
            "tune.space.passes[5].amount: there is no pass 5",
        ),
    ],
)
def test_space_is_validated_through_the_pass_configs(
    tmp_path: Path, space: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        resolve_space(tmp_path, base_config(tune={"space": space}))
    assert str(err.value).startswith(message)


def test_bad_space_fails_validate_with_one_line_and_exit_2(tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path, base_config(tune={"space": {"passes[0].amount": {"low": 0.9, "high": 0.2}}})
    )
    proc = run_cli("validate", "--config", str(cfg), cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "Error: tune.space.passes[0].amount: low 0.9 is above high 0.2" in proc.stderr
    good = write_config(tmp_path, tune_config(), name="good.yaml")
    proc = run_cli("validate", "--config", str(good), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "tune: 2 searched option(s), 2 optional pass(es)" in proc.stdout


def test_space_searches_which_modules_a_pass_touches(tmp_path: Path) -> None:
    """Compressing embedding tables or not is an include/exclude choice: lists are
    searched by their index, each validated as the pass would read it."""
    keep = ["re:.*embeddings.*"]
    space = resolve_space(
        tmp_path, base_config(tune={"space": {"passes[1].exclude": {"choices": [[], keep]}}})
    )
    (d,) = space.dimensions
    assert d.encoded and list(d.candidates()) == [[], keep]


def test_space_searches_the_distilled_students_shape(tmp_path: Path) -> None:
    """Which blocks a derived student keeps, whether its blocks are matched, and which
    layers width narrows are options like any other: searched, each value checked."""
    ffn = [r"re:.*intermediate\.dense"]
    passes = [{"type": "distill", "layers": [0, 4, 5], "loss": "cosine", "epochs": 1}]
    data = {"holdout": {"builtin": "digits", "split": "test"}}
    data["train"] = {"builtin": "digits", "split": "train"}
    space = resolve_space(
        tmp_path,
        base_config(
            data=data,
            passes=passes,
            tune={
                "space": {
                    "passes[0].layers": [[0, 4, 5], [0, 2, 4, 5]],
                    "passes[0].hidden": [0.0, 1.0],
                    "passes[0].width": [None, 0.5],
                    "passes[0].include": [["*"], ffn],
                }
            },
        ),
    )
    by_option = {d.option: d for d in space.dimensions}
    assert list(by_option["layers"].candidates()) == [[0, 4, 5], [0, 2, 4, 5]]
    assert list(by_option["include"].candidates()) == [["*"], ffn]
    # a value the pass refuses is refused at load, with the pass's own reason
    bad = base_config(
        data=data, passes=passes, tune={"space": {"passes[0].layers": [[0, 4, 5], [5, 0]]}}
    )
    with pytest.raises(ConfigError, match=r"passes\[0\]\.layers: \[5, 0\] does not fit"):
        resolve_space(tmp_path, bad)


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_profiles_keep_registered_passes_and_record_the_rest(tmp_path: Path, profile: str) -> None:
    space = resolve_space(tmp_path, base_config(tune={"profile": profile}))
    assert space.passes, "every profile keeps at least one registered pass"
    for p in space.passes:
        assert p["type"] in PASSES
    wanted = {pp.type for pp in PROFILES[profile].passes}
    for missing in wanted - set(PASSES):
        assert any(f"pass {missing!r} is not registered" in s for s in space.skipped)
    # every kept option value validates: the base trial builds as a real config
    space.build(space.passes)
    for d in space.dimensions:
        for value in d.candidates():
            if d.index is None:  # a ship option: valid with some other searched values
                assert _fits(space, space.dimensions, d, value) is None, (d.name, value)
                continue
            passes = [dict(p) for p in space.passes]
            passes[d.index][d.option] = value
            space.build(passes)
    prune_opts = PASSES["prune"].Config.model_fields
    if profile == "cpu-x86" and "structured" not in prune_opts:
        assert any("'structured'" in s for s in space.skipped)


@pytest.mark.parametrize(
    "profile", sorted(n for n, p in PROFILES.items() if any(pp.not_after for pp in p.passes))
)
def test_a_profile_trial_leaves_out_a_pass_an_earlier_one_leaves_nothing_to_do(
    tmp_path: Path, profile: str
) -> None:
    """int8 after clustering changes nothing (the clustered layers are no longer Linear),
    and a pass that changes nothing is an error: a trial with both would be lost. With
    clustering on, the trial leaves quantize out; with it off, quantize runs."""
    space = resolve_space(tmp_path, base_config(tune={"profile": profile}))
    types = [p["type"] for p in space.passes]
    c, q = types.index("cluster"), types.index("quantize")
    assert space.not_after == {q: ("cluster",)}
    fixed = {d.name: d.candidates()[0] for d in space.dimensions}
    enabled = {f"passes[{i}].enabled": True for i in space.optional}
    on, _ = space.sample(optuna.trial.FixedTrial({**fixed, **enabled}))
    assert [p["type"] for p in on if p["type"] in ("cluster", "quantize")] == ["cluster"]
    off, _ = space.sample(
        optuna.trial.FixedTrial({**fixed, **enabled, f"passes[{c}].enabled": False})
    )
    assert [p["type"] for p in off if p["type"] in ("cluster", "quantize")] == ["quantize"]


@pytest.mark.slow
def test_size_first_profile_runs_every_trial_it_samples(workdir: Path) -> None:
    """The size-first profile's trials on the demo: none fails. Before, every trial
    that kept both clustering and int8 failed with "quantize changed nothing" (8 of 12
    on the documented example, its base trial first)."""
    cfg = write_config(
        workdir, base_config(tune={"profile": "size-first", "max_trials": 6, "seed": 0})
    )
    proc = run_cli("tune", "--config", str(cfg), cwd=workdir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    trials = study_trials(workdir, "compress")
    assert len(trials) == 6
    states = {t.number: t.state for t in trials}
    assert optuna.trial.TrialState.FAIL not in states.values(), states
    assert "changed nothing" not in proc.stdout + proc.stderr
    # the base trial: the profile's passes, quantize left out beside clustering
    assert [p["type"] for p in trials[0].user_attrs["passes"]] == ["prune", "cluster"]
    assert trials[0].user_attrs["passed"]


# ---------------------------------------------------------------- the search, for real


def _gate_bytes(folder: Path, passes: list[dict[str, Any]], name: str) -> tuple[bool, int]:
    """The real gate (pack, reload, evaluate) on one config, in this process."""
    cfg = write_config(folder, base_config(passes=passes), name=f"{name}.yaml")
    report = pipeline.evaluate(load_config(cfg), report_dir=folder / f"single-{name}")
    shipped = (folder / f"single-{name}" / "student.ccz").stat().st_size
    assert report.student.file_bytes == shipped
    return report.passed, shipped


@pytest.mark.slow
def test_tune_finds_a_smaller_passing_student_than_single_pass_defaults(workdir: Path) -> None:
    singles = {
        "prune": _gate_bytes(workdir, [{"type": "prune", "amount": 0.5}], "prune"),
        "quantize": _gate_bytes(workdir, [{"type": "quantize"}], "quantize"),
    }
    best_single = min(b for ok, b in singles.values() if ok)

    cfg = write_config(workdir, tune_config(max_trials=10, seed=0))
    proc = run_cli("tune", "--config", str(cfg), cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    assert "best passing config: trial" in proc.stdout

    trials = study_trials(workdir, "compress")
    assert len(trials) == 10
    passing = [
        t for t in trials if t.state == optuna.trial.TrialState.COMPLETE and t.user_attrs["passed"]
    ]
    best = min(passing, key=lambda t: (t.value, t.number))
    best_bytes = int(best.user_attrs["metrics"]["student.file_bytes"])
    assert best_bytes < best_single, (best_bytes, singles)
    # and the search improved on its own starting point (the config's passes, trial 0)
    assert best_bytes < trials[0].user_attrs["metrics"]["student.file_bytes"]
    assert best.user_attrs["metrics"]["delta.accuracy_drop_points"] <= 2.0
    # the base config is tried first
    assert trials[0].user_attrs["passes"] == [
        {"type": "prune", "amount": 0.5, "scope": "global"},
        {"type": "quantize"},
    ]

    tuned = workdir / "tuned.yaml"
    assert yaml.safe_load(tuned.read_text())["passes"] == best.user_attrs["passes"]
    assert "tune" not in yaml.safe_load(tuned.read_text())
    proc = run_cli("validate", "--config", str(tuned), cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    report = pipeline.evaluate(load_config(tuned), report_dir=workdir / "rerun")
    assert report.passed
    rerun = (workdir / "rerun" / "student.ccz").stat().st_size
    assert abs(rerun - best_bytes) < 64  # pass timings in the manifest vary by a few bytes

    png = workdir / "ci-compress-tune" / "pareto.png"
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    from PIL import Image

    with Image.open(png) as im:
        im.verify()
    with Image.open(png) as im:
        assert im.size[0] >= 600 and im.size[1] >= 400
        assert len(im.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 20  # drawn, not blank
    md = (workdir / "ci-compress-tune" / "tune-report.md").read_text()
    assert "![Pareto front](pareto.png)" in md
    assert f"**Best passing config: trial {best.number}**" in md and f"{best_bytes:,}" in md


@pytest.mark.slow
def test_no_passing_config_exits_1_and_writes_no_tuned_yaml(workdir: Path) -> None:
    cfg = write_config(
        workdir,
        tune_config(max_trials=3),
    )
    text = yaml.safe_load(cfg.read_text())
    text["thresholds"] = {"min_compression_ratio": 1000}
    cfg.write_text(yaml.safe_dump(text))
    proc = run_cli("tune", "--config", str(cfg), "--quiet", cwd=workdir)
    assert proc.returncode == 1, proc.stderr
    assert "NO PASSING CONFIG" in proc.stdout
    assert not (workdir / "tuned.yaml").exists()
    assert (
        "No trial passed the gate" in (workdir / "ci-compress-tune" / "tune-report.md").read_text()
    )
    assert len(study_trials(workdir, "compress")) == 3


@pytest.mark.slow
def test_resumed_study_continues_its_count_and_sequence(workdir: Path) -> None:
    cfg = write_config(workdir, tune_config(max_trials=5, startup_trials=4))
    proc = run_cli("tune", "--config", str(cfg), "--trials", "3", "--quiet", cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    assert len(study_trials(workdir, "compress")) == 3
    proc = run_cli("tune", "--config", str(cfg), "--quiet", cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    resumed = study_trials(workdir, "compress")
    assert [t.number for t in resumed] == [0, 1, 2, 3, 4]
    # spent budget: a third run adds nothing and still reports the best
    proc = run_cli("tune", "--config", str(cfg), "--quiet", cwd=workdir)
    assert proc.returncode == 0 and "5 trials" in proc.stdout
    assert len(study_trials(workdir, "compress")) == 5
    # the same seed in one go asks the same questions (trial n is seeded with seed + n)
    proc = run_cli("tune", "--config", str(cfg), "--study", "straight", "--quiet", cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    straight = study_trials(workdir, "straight")
    assert [t.params for t in straight[:4]] == [t.params for t in resumed[:4]]


@pytest.mark.slow
def test_two_processes_share_one_study(workdir: Path) -> None:
    cfg = write_config(workdir, tune_config(max_trials=8))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PYTHONPATH"] = str(REPO)
    cmd = [sys.executable, "-m", "ci_compress", "tune", "--config", str(cfg), "--quiet"]
    procs = [
        subprocess.Popen(
            cmd, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
    trials = [t for t in study_trials(workdir, "compress") if not t.user_attrs.get("over_budget")]
    assert len(trials) == 8
    pids = {t.user_attrs["worker"].split(":")[1] for t in trials}
    assert pids == {str(p.pid) for p in procs}

    # --jobs: local worker processes on the same storage (w0 is the CLI's process, w1 a
    # child). A process of its own: in this warm test process w0 could take every trial
    # before the child has imported torch.
    proc = run_console(
        "tune", "--config", str(cfg), "--trials", "20", "--jobs", "2", "--quiet", cwd=workdir
    )
    assert proc.returncode == 0, proc.stderr
    trials = [t for t in study_trials(workdir, "compress") if not t.user_attrs.get("over_budget")]
    assert len(trials) == 20
    assert {t.user_attrs["worker"].split(":")[2] for t in trials[8:]} == {"w0", "w1"}


ASK_ON_EACH_LINE = """
import sys
import optuna
from ci_compress.tuning.study import open_storage
study = optuna.load_study(study_name="race", storage=open_storage(sys.argv[1]))
print("ready", flush=True)
for _line in sys.stdin:  # the test releases both workers at once, round after round
    print(study.ask().number, flush=True)
"""


def test_two_workers_never_take_the_same_waiting_trial(tmp_path: Path) -> None:
    """Enqueued (waiting) trials go to one worker each, even when two ask at once.

    Without BEGIN IMMEDIATE on sqlite, both workers read the same waiting trial and
    both run it (6 of 10 rounds measured); the second then fails to tell it.
    """
    from ci_compress.tuning.study import open_storage

    url = f"sqlite:///{tmp_path / 'race.db'}"
    rounds = 20
    study = optuna.create_study(study_name="race", storage=open_storage(url))
    for i in range(2 * rounds):
        study.enqueue_trial({"x": float(i)})
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", ASK_ON_EACH_LINE, url],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    taken: list[int] = []
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline() == "ready\n"
        for _ in range(rounds):
            for p in procs:
                assert p.stdin is not None
                p.stdin.write("go\n")
                p.stdin.flush()
            for p in procs:
                assert p.stdout is not None
                taken.append(int(p.stdout.readline()))
    finally:
        for p in procs:
            p.communicate(timeout=60)  # closes stdin: the worker's loop ends
    assert sorted(taken) == list(range(2 * rounds)), f"a trial went to both workers: {taken}"


def test_tune_without_a_tune_section_is_a_config_error(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, base_config())
    proc = run_cli("tune", "--config", str(cfg), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "Error: tune: the config has no tune: section" in proc.stderr


def test_loaded_config_keeps_tune_section(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, tune_config(profile="size-first"))
    assert load_config(cfg).config.tune is not None


@pytest.mark.slow
def test_every_trial_is_a_nested_mlflow_run(workdir: Path, mlflow_server: MlflowServer) -> None:
    cfg = write_config(
        workdir,
        {
            **tune_config(max_trials=3),
            "mlflow": {
                "enabled": True,
                "tracking_uri": mlflow_server.uri,
                "experiment": "tune-e2e",
            },
        },
    )
    proc = run_cli("tune", "--config", str(cfg), "--quiet", cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    client = MlflowClient(tracking_uri=mlflow_server.uri)
    exp = client.get_experiment_by_name("tune-e2e")
    runs = client.search_runs([exp.experiment_id], max_results=50)
    parents = [r for r in runs if r.data.tags.get("ci_compress.kind") == "tune"]
    children = [r for r in runs if r.data.tags.get("ci_compress.kind") == "tune-trial"]
    assert len(parents) == 1 and len(children) == 3
    parent = parents[0]
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children)
    trials = {t.number: t for t in study_trials(workdir, "compress")}
    for c in children:
        t = trials[int(c.data.tags["ci_compress.trial"])]
        assert c.data.metrics["student.file_bytes"] == t.user_attrs["metrics"]["student.file_bytes"]
        passes = t.user_attrs["passes"]
        assert c.data.params.get("passes.0.type") == (passes[0]["type"] if passes else None)
        assert c.data.params["thresholds.max_accuracy_drop"] == "2.0"
    art = {f.path for f in client.list_artifacts(parent.info.run_id, "tune")}
    assert {"tune/pareto.png", "tune/tune-report.md", "tune/tuned.yaml"} <= art
    assert parent.data.tags["ci_compress.verdict"] == "pass"
    assert parent.data.metrics["tune.trials"] == 3.0


def test_spent_timeout_starts_no_trial_and_exits_1(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, tune_config(max_trials=5))
    proc = run_cli("tune", "--config", str(cfg), "--timeout", "0.001", "--quiet", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "NO PASSING CONFIG" in proc.stdout
    assert not (tmp_path / "tuned.yaml").exists()
    states = [t.state for t in study_trials(tmp_path, "compress")]
    assert states == [optuna.trial.TrialState.WAITING]  # the base config, queued for next time
