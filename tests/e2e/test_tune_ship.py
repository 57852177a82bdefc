"""ci-compress tune searches where the student serves (ship.runtime) and how the runtime
quantizes it (ship.quantize, ship.calibration_batches) with the syntax of pass options;
the new pass options (structured pruning, distill width, embedding tables) are searched
through the same generic path."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from ci_compress import pipeline
from ci_compress.config import ShipConfig, load_config
from ci_compress.errors import ConfigError
from tests.helpers.cli import run_cli
from tests.helpers.configs import base_config, write_config
from tests.helpers.tune import resolve_space, study_trials

DATA = {
    "holdout": {"builtin": "digits", "split": "test"},
    "calibration": {"builtin": "digits", "split": "train"},
}
RUNTIMES = {"choices": ["torch", "onnxruntime"]}
QUANTIZE = {"choices": ["none", "int8"]}


def _config(
    space: dict[str, Any], tune: dict[str, Any] | None = None, **overrides: Any
) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "passes": [{"type": "prune", "amount": 0.5}],
        "data": DATA,
        "tune": {"space": space, **(tune or {})},
        **overrides,
    }
    return base_config(**fields)


# ---------------------------------------------------------------- the space


def test_ship_options_are_dimensions_with_the_values_of_the_config_model(tmp_path: Path) -> None:
    """Every value ShipConfig allows can be searched, read from the model: a new
    ship.quantize value needs no change in tuning."""
    runtimes = list(typing.get_args(ShipConfig.model_fields["runtime"].annotation))
    schemes = list(typing.get_args(ShipConfig.model_fields["quantize"].annotation))
    space = resolve_space(
        tmp_path,
        _config(
            {
                "ship.runtime": {"choices": runtimes},
                "ship.quantize": {"choices": schemes},
                "ship.calibration_batches": {"low": 1, "high": 4},
                "passes[0].amount": {"low": 0.3, "high": 0.9},
            }
        ),
    )
    dims = {d.name: d for d in space.dimensions}
    assert [d.name for d in space.dimensions] == [
        "passes[0].amount",
        "ship.runtime",
        "ship.quantize",
        "ship.calibration_batches",
    ]
    assert dims["ship.runtime"].candidates() == runtimes
    assert dims["ship.quantize"].candidates() == schemes
    assert dims["ship.calibration_batches"].is_int
    assert all(dims[k].in_ship for k in dims if k.startswith("ship."))
    # the first trial is the config's own ship section (defaults included)
    assert space.base_params() == {
        "passes[0].amount": 0.5,
        "ship.runtime": "torch",
        "ship.quantize": "none",
    }
    # a trial's config carries its ship values, the rest of ship: stays the config's
    config = space.build(space.passes, {"runtime": "openvino", "quantize": "int8"})
    assert (config.ship.runtime, config.ship.quantize) == ("openvino", "int8")
    assert config.ship.filename == "student.ccz"


@pytest.mark.parametrize(
    ("space", "overrides", "message"),
    [
        (  # int8 is valid with no searched runtime: the config's own is torch
            {"ship.quantize": QUANTIZE},
            {},
            "tune.space.ship.quantize: 'int8' does not fit the config: ship.quantize: int8 is done by the serving runtime's own toolchain",
        ),
        (
            {"ship.runtim": RUNTIMES},
            {},
            "tune.space.ship.runtim: 'torch' does not fit the config: ship.runtim: unknown key; did you mean 'runtime'?",
        ),
        (
            {"ship.quantize": {"choices": ["none", "int3"]}},
            {},
            "tune.space.ship.quantize: 'int3' does not fit the config: ship.quantize: must be one of",
        ),
        (  # what a run refuses before loading anything is refused here, naming the key
            {"ship.runtime": RUNTIMES, "ship.quantize": QUANTIZE},
            {"data": {"holdout": DATA["holdout"]}},
            "tune.space.ship.quantize: 'int8' does not fit the config: data.calibration",
        ),
        (  # a torch int8 pass cannot be served by onnxruntime: the runtime value is refused
            {"ship.runtime": RUNTIMES},
            {"passes": [{"type": "quantize", "scheme": "int8-dynamic"}]},
            "tune.space.ship.runtime: 'onnxruntime' does not fit the config: ship.runtime: passes[0].scheme int8-dynamic makes torch.ao int8 modules",
        ),
        (  # torch cannot serve the only searched quantize value: no trial could use it
            {"ship.runtime": RUNTIMES, "ship.quantize": {"choices": ["int8"]}},
            {},
            "tune.space.ship.runtime: 'torch' does not fit the config: ship.quantize: int8 is done by the serving runtime's own toolchain",
        ),
        (
            {"shipping.runtime": RUNTIMES},
            {},
            "tune.space: bad key 'shipping.runtime': write passes[<index>].<option> or ship.<option>",
        ),
    ],
)
def test_ship_space_is_validated_as_a_run_would(
    tmp_path: Path, space: dict[str, Any], overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        resolve_space(tmp_path, _config(space, **overrides))
    assert str(err.value).startswith(message), str(err.value)
    assert "\n" not in str(err.value)


def test_values_valid_only_together_are_accepted(tmp_path: Path) -> None:
    """quantize int8 is invalid with the config's runtime (torch) but valid with a
    searched one; a pass scheme that onnxruntime cannot serve is accepted beside a
    scheme it can when the runtime is searched."""
    space = resolve_space(tmp_path, _config({"ship.runtime": RUNTIMES, "ship.quantize": QUANTIZE}))
    assert [d.name for d in space.dimensions] == ["ship.runtime", "ship.quantize"]
    space = resolve_space(
        tmp_path,
        _config(
            {"ship.runtime": RUNTIMES, "passes[0].scheme": {"choices": ["fp16", "int8-dynamic"]}},
            passes=[{"type": "quantize", "scheme": "fp16"}],
        ),
    )
    assert len(space.dimensions) == 2


def test_a_runtime_is_accepted_beside_an_optional_pass_it_cannot_serve(tmp_path: Path) -> None:
    """cpu-x86's quantize pass makes torch int8 modules; onnxruntime is valid when that
    optional pass is off, so the profile and a searched runtime go together."""
    space = resolve_space(
        tmp_path, _config({"ship.runtime": RUNTIMES}, tune={"profile": "cpu-x86"})
    )
    quantize = next(i for i, p in enumerate(space.passes) if p["type"] == "quantize")
    assert quantize in space.optional
    (runtime,) = (d for d in space.dimensions if d.name == "ship.runtime")
    assert runtime.choices == tuple(RUNTIMES["choices"])  # the user's entry, not the profile's
    with pytest.raises(ConfigError):  # the combination itself is what a run refuses
        space.validate(space.passes, {"runtime": "onnxruntime"})
    off = [p for i, p in enumerate(space.passes) if i != quantize]
    assert space.validate(off, {"runtime": "onnxruntime"}).ship.runtime == "onnxruntime"


def test_new_pass_options_are_searched_through_the_generic_path(tmp_path: Path) -> None:
    """Structured pruning and its importance, distill width and loss, clustering or
    int8 of embedding tables: pass options like any other, checked as a run checks."""
    train = {**DATA, "train": {"builtin": "digits", "split": "train"}}
    space = resolve_space(
        tmp_path,
        _config(
            {
                "passes[0].structured": {"choices": [False, True]},
                "passes[0].importance": {"choices": ["magnitude", "taylor"]},
                "passes[0].norm": {"choices": ["l1", "l2"]},
                "passes[1].width": {"low": 0.3, "high": 0.8},
                "passes[1].loss": {"choices": ["kl", "mse"]},
                "passes[2].include": {"choices": [[], ["re:.*embed.*"]]},
                "passes[2].bits": {"low": 4, "high": 8},
            },
            data=train,
            passes=[
                {"type": "prune", "amount": 0.3},
                {"type": "distill", "width": 0.5, "epochs": 1},
                {"type": "cluster", "bits": 6},
            ],
        ),
    )
    assert {d.name for d in space.dimensions} == {
        "passes[0].structured",
        "passes[0].importance",
        "passes[0].norm",
        "passes[1].width",
        "passes[1].loss",
        "passes[2].include",
        "passes[2].bits",
    }
    # Taylor importance reads data.train: without it the space is refused at load
    with pytest.raises(ConfigError) as err:
        resolve_space(
            tmp_path,
            _config(
                {"passes[0].importance": {"choices": ["magnitude", "taylor"]}},
                passes=[{"type": "prune", "amount": 0.3, "structured": True}],
            ),
        )
    assert str(err.value).startswith("tune.space.passes[0].importance: 'taylor' does not fit")
    assert "data.train" in str(err.value)


# ---------------------------------------------------------------- the search, for real


def _precreate(folder: Path, study: str, *params: dict[str, Any]) -> None:
    """Queue trials before tune starts (tune then queues no base trial of its own)."""
    s = optuna.create_study(study_name=study, storage=f"sqlite:///{folder / 'ci-compress-tune.db'}")
    for p in params:
        s.enqueue_trial(p)


@pytest.mark.slow
def test_tune_searches_the_runtime_and_the_best_yaml_gates_alike(workdir: Path) -> None:
    cfg = write_config(
        workdir,
        _config(
            {
                "passes[0].amount": {"low": 0.3, "high": 0.7},
                "ship.runtime": RUNTIMES,
                "ship.quantize": QUANTIZE,
            },
            tune={"max_trials": 5, "seed": 0},
        ),
    )
    # the base config, an invalid combination, and onnxruntime int8: the rest is sampled
    base = {"passes[0].amount": 0.5, "ship.runtime": "torch", "ship.quantize": "none"}
    _precreate(
        workdir,
        "compress",
        base,
        {**base, "ship.quantize": "int8"},
        {**base, "ship.runtime": "onnxruntime", "ship.quantize": "int8"},
    )
    proc = run_cli("tune", "--config", str(cfg), cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    trials = study_trials(workdir, "compress")
    # skipped combinations were not run and are not counted: 5 trials ran
    skipped = [t for t in trials if t.user_attrs.get("invalid")]
    assert len(trials) - len(skipped) == 5 and trials[1] in skipped
    for t in skipped:  # each one is torch with int8, and nothing else
        assert t.user_attrs["ship"] == {"runtime": "torch", "quantize": "int8"}
    assert {t.user_attrs["ship"]["runtime"] for t in trials} == {"torch", "onnxruntime"}
    assert f", {len(skipped)} skipped as invalid combinations)" in proc.stdout

    # the invalid combination was not run: pruned, no measurement, said why
    bad = trials[1]
    assert bad.user_attrs["ship"] == {"runtime": "torch", "quantize": "int8"}
    assert bad.state == optuna.trial.TrialState.PRUNED and "metrics" not in bad.user_attrs
    assert bad.user_attrs["error"].startswith("invalid combination: ship.quantize: int8")
    assert bad.user_attrs["invalid"] is True
    assert "trial 1: skipped, invalid combination" in proc.stderr

    # the runtime decides what is measured: onnxruntime int8 ships the QDQ .onnx
    ort = trials[2]
    assert ort.user_attrs["passed"] and (workdir / "ci-compress-tune/trials/0002").is_dir()
    assert (workdir / "ci-compress-tune/trials/0002/student.onnx").is_file()

    passing = [t for t in trials if t.state.name == "COMPLETE" and t.user_attrs["passed"]]
    best = min(passing, key=lambda t: (t.value, t.number))
    assert f"best passing config: trial {best.number}: " in proc.stdout
    shown = ", ".join(f"{k}={v}" for k, v in best.user_attrs["ship"].items())
    assert f"; ship({shown})" in proc.stdout
    md = (workdir / "ci-compress-tune" / "tune-report.md").read_text()
    assert f"**Best passing config: trial {best.number}**" in md and f"; ship({shown})" in md
    assert "| 1 | skipped | prune(amount=0.5); ship(runtime=torch, quantize=int8) |" in md
    assert f"{len(skipped)} skipped as invalid combinations (not run, not counted" in md

    tuned = workdir / "tuned.yaml"
    written = yaml.safe_load(tuned.read_text())
    assert written["ship"] == best.user_attrs["ship"]
    assert written["passes"] == best.user_attrs["passes"]
    report = pipeline.evaluate(load_config(tuned), report_dir=workdir / "rerun")
    figures = report.metrics()
    m = best.user_attrs["metrics"]
    assert report.passed
    assert figures["student.accuracy"] == m["student.accuracy"]
    # the manifest inside a .ccz holds pass timings (a few bytes vary); a runtime artifact does not
    exact = best.user_attrs["ship"]["runtime"] != "torch"
    assert abs(figures["student.file_bytes"] - m["student.file_bytes"]) <= (0 if exact else 64)


@pytest.mark.slow
def test_a_study_stored_before_ship_options_still_loads(workdir: Path) -> None:
    """Trials written by the previous version have no ship attribute: the study is
    resumed with a ship space, the old trial is reported and never taken for a new one."""
    old_cfg = write_config(
        workdir,
        _config({"passes[0].amount": {"low": 0.3, "high": 0.7}}),
        name="old.yaml",
    )
    proc = run_cli("tune", "--config", str(old_cfg), "--trials", "1", "--quiet", cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    (src,) = study_trials(workdir, "old")
    # the same trial as the previous version stored it: no "ship" attribute
    attrs = {k: v for k, v in src.user_attrs.items() if k != "ship"}
    study = optuna.create_study(
        study_name="compress", storage=f"sqlite:///{workdir / 'ci-compress-tune.db'}"
    )
    study.add_trial(
        optuna.trial.create_trial(
            params=src.params,
            distributions=src.distributions,
            value=src.value,
            user_attrs=attrs,
        )
    )
    cfg = write_config(
        workdir,
        _config(
            {"passes[0].amount": {"low": 0.3, "high": 0.7}, "ship.runtime": RUNTIMES},
            tune={"max_trials": 2},
        ),
    )
    proc = run_cli("tune", "--config", str(cfg), cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    old, new = study_trials(workdir, "compress")
    assert "ship" not in old.user_attrs and "duplicate_of" not in new.user_attrs
    assert set(new.user_attrs["ship"]) == {"runtime"}
    md = (workdir / "ci-compress-tune" / "tune-report.md").read_text()
    assert "| 0 | complete | prune(amount=0.5) |" in md  # the old trial, without a ship part
    tuned = yaml.safe_load((workdir / "tuned.yaml").read_text())
    best = min((old, new), key=lambda t: (t.value, t.number))
    # an old trial ran with the config's ship section: tuned.yaml keeps it
    assert tuned.get("ship", {}) == best.user_attrs.get("ship", {})


def test_cpu_x86_profile_searches_where_the_student_is_served(tmp_path: Path) -> None:
    """The latency profile searches the serving runtime and its int8 too: on a host
    without VNNI torch int8 is slower than fp32 and OpenVINO int8 2.2x faster."""
    space = resolve_space(tmp_path, _config({}, tune={"profile": "cpu-x86"}))
    ship = {d.name: d.choices for d in space.dimensions if d.in_ship}
    assert ship == {
        "ship.runtime": ("torch", "onnxruntime", "openvino"),
        "ship.quantize": ("none", "int8"),
    }
    quantize = next(i for i, p in enumerate(space.passes) if p["type"] == "quantize")
    off = [p for i, p in enumerate(space.passes) if i != quantize]
    served = space.validate(off, {"runtime": "openvino", "quantize": "int8"})
    assert (served.ship.runtime, served.ship.quantize) == ("openvino", "int8")
    # the first trial is the config itself: torch, no runtime quantization
    params = space.base_params()
    assert (params["ship.runtime"], params["ship.quantize"]) == ("torch", "none")


def test_a_profile_leaves_out_ship_values_the_config_cannot_run_and_says_so(
    tmp_path: Path,
) -> None:
    no_calibration = {"holdout": DATA["holdout"]}
    space = resolve_space(
        tmp_path,
        _config({"ship.runtime": RUNTIMES}, tune={"profile": "cpu-x86"}, data=no_calibration),
    )
    names = [d.name for d in space.dimensions]
    # the user's entry wins over the profile's; int8 (needs data.calibration) is left out
    assert "ship.quantize" not in names
    (runtime,) = (d for d in space.dimensions if d.name == "ship.runtime")
    assert runtime.choices == tuple(RUNTIMES["choices"])
    assert any(s.startswith("ship.quantize='int8' (") for s in space.skipped)


def test_a_bare_list_is_short_for_choices(tmp_path: Path) -> None:
    short = resolve_space(
        tmp_path,
        _config({"ship.runtime": ["torch", "onnxruntime"], "passes[0].include": [["*"], ["0"]]}),
    )
    long = resolve_space(
        tmp_path,
        _config({"ship.runtime": RUNTIMES, "passes[0].include": {"choices": [["*"], ["0"]]}}),
    )
    assert [(d.name, d.choices) for d in short.dimensions] == [
        (d.name, d.choices) for d in long.dimensions
    ]
    assert {d.name: d.choices for d in short.dimensions}["ship.runtime"] == ("torch", "onnxruntime")
