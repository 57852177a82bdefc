"""``validate`` (and the start of every run) catches what a run would reject, before any
model is loaded; factories beside the config import without PYTHONPATH."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from ci_compress.config import load_config
from ci_compress.errors import ConfigError
from ci_compress.refs import import_factory
from ci_compress.stages import check
from tests.helpers.cli import run_cli
from tests.helpers.configs import base_config, write_config

MISSING_MODEL = {
    "path": "no-such-model.safetensors",
    "factory": "ci_compress.demo.models:digits_mlp",
}


def cli(*args: str, cwd: Path) -> tuple[int, str, str]:
    result = run_cli(*args, cwd=cwd)
    return result.returncode, result.stdout, result.stderr


CASES: list[tuple[str, dict[str, Any], str]] = [
    (
        "unimportable-data-factory",
        {"data": {"holdout": {"factory": "nowhere_at_all:batches"}}},
        "Error: data.holdout.factory: cannot import 'nowhere_at_all'",
    ),
    (
        "distill-without-train",
        {"passes": [{"type": "distill", "width": 0.5}]},
        "Error: data.train: passes[0] distills a student, but the config has no data.train",
    ),
    (
        "fine-tune-without-train",
        {"passes": [{"type": "prune", "amount": 0.5, "fine_tune_epochs": 1}]},
        "Error: data.train: passes[0] fine-tunes (fine_tune_epochs > 0), but the config has no data.train",
    ),
    (
        "static-int8-without-calibration",
        {"passes": [{"type": "quantize", "scheme": "int8-static"}]},
        "Error: data.calibration: passes[0] uses scheme int8-static, but the config has no data.calibration",
    ),
    (
        "unimportable-student-factory",
        {
            "passes": [{"type": "distill", "student_factory": "nowhere_at_all:student"}],
            "data": {
                "holdout": {"builtin": "digits"},
                "train": {"builtin": "digits", "split": "train"},
            },
        },
        "Error: passes[0].student_factory: cannot import 'nowhere_at_all'",
    ),
    (
        "custom-metric-named-like-a-figure",
        {
            "task": {"type": "custom", "metric": "builtins:samples"},
            "thresholds": {"metrics": {"samples": {"min_value": 1}}},
        },
        "Error: task.metric: the function's name 'samples' is a figure every gate reports",
    ),
    (
        "torch-int8-pass-in-another-runtime",
        {"ship": {"runtime": "onnxruntime"}},
        "Error: ship.runtime: passes[1].scheme int8-dynamic makes torch.ao int8 modules, which ship.runtime: onnxruntime cannot run",
    ),
    (
        "onnx-export-and-onnxruntime",
        {"passes": [], "ship": {"runtime": "onnxruntime", "export": ["onnx"]}},
        "Error: ship.export: ship.runtime: onnxruntime writes the student's ONNX file itself",
    ),
    (
        "runtime-int8-without-calibration",
        {"passes": [], "ship": {"runtime": "openvino", "quantize": "int8"}},
        "Error: data.calibration: ship.quantize int8 calibrates activation ranges, but the config has no data.calibration",
    ),
    (
        "export-program-with-passes",
        {"model": {"path": "model.pt2"}},
        "Error: passes: a torch.export program (.pt2) cannot be compressed",
    ),
]


@pytest.mark.parametrize(("name", "overrides", "error"), CASES, ids=[c[0] for c in CASES])
def test_validate_and_run_refuse_before_loading_a_model(
    name: str,
    overrides: dict[str, Any],
    error: str,
    tmp_path: Path,
) -> None:
    config = base_config(**{"model": MISSING_MODEL, **overrides})
    path = write_config(tmp_path, config)
    code, _, err = cli("validate", "--config", str(path), cwd=tmp_path)
    assert code == 2, err
    assert err.splitlines()[0].startswith(error), err
    # run stops at the same place: the missing model file (exit 3) is never reached
    code, _, err = cli("run", "--config", str(path), "--quiet", cwd=tmp_path)
    assert code == 2 and err.splitlines()[0].startswith(error), err


def test_cuda_on_a_machine_without_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    path = write_config(tmp_path, base_config(model=MISSING_MODEL, runtime={"device": "cuda"}))
    code, _, err = cli("validate", "--config", str(path), cwd=tmp_path)
    assert code == 2 and err.startswith("Error: runtime.device: cuda was asked for, but "), err
    assert "hint: set runtime.device: auto" in err
    auto = write_config(tmp_path, base_config(model=MISSING_MODEL, runtime={"device": "auto"}))
    code, out, err = cli("validate", "--config", str(auto), cwd=tmp_path)
    assert code == 0 and "valid" in out, err


FACTORY = """
import numpy as np
from ci_compress.loading.data import digits_split

MARK = "{mark}"

def holdout():
    x, y = digits_split("test")
    yield x[:50], y[:50]
"""


def test_a_factory_beside_the_config_needs_no_pythonpath(tmp_path: Path) -> None:
    before = list(sys.path)
    folders = []
    for mark in ("a", "b"):
        folder = tmp_path / mark
        folder.mkdir()
        (folder / "local_data.py").write_text(FACTORY.format(mark=mark))
        folders.append(folder)
        loaded = load_config(
            write_config(folder, base_config(data={"holdout": {"factory": "local_data:holdout"}}))
        )
        check(loaded)
        fn = import_factory("local_data:holdout", path="data.holdout.factory", base_dir=folder)
        # each config gets the module beside it, not the one an earlier config imported
        module = sys.modules[fn.__module__]
        assert mark == module.MARK
        assert sys.path == before  # nothing left behind for the next config
    with pytest.raises(ConfigError, match="cannot import 'local_data'"):
        sys.modules.pop("local_data", None)
        import_factory("local_data:holdout", path="data.holdout.factory")


def test_a_factory_module_that_raises_on_import_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "broken_mod.py").write_text("raise RuntimeError('no GPU here')\n")
    with pytest.raises(ConfigError) as e:
        import_factory("broken_mod:f", path="model.factory", base_dir=tmp_path)
    assert str(e.value) == "model.factory: importing 'broken_mod' raised RuntimeError: no GPU here"
    assert str(tmp_path) not in sys.path


def test_a_torch_int8_pass_with_a_runtime_names_the_fix(tmp_path: Path) -> None:
    config = base_config(
        model=MISSING_MODEL,
        passes=[{"type": "quantize", "scheme": "int8-static"}],
        data={
            "holdout": {"builtin": "digits"},
            "calibration": {"builtin": "digits", "split": "train"},
        },
        ship={"runtime": "openvino"},
    )
    code, _, err = cli("validate", "--config", str(write_config(tmp_path, config)), cwd=tmp_path)
    assert code == 2, err
    assert "passes[0].scheme int8-static" in err and "ship.runtime: openvino" in err
    assert "set ship.quantize: int8" in err
    # the fix the hint names validates
    config["passes"], config["ship"] = [], {"runtime": "openvino", "quantize": "int8"}
    code, out, err = cli("validate", "--config", str(write_config(tmp_path, config)), cwd=tmp_path)
    assert code == 0 and "valid" in out, err


def test_int8_without_a_runtime_is_refused(tmp_path: Path) -> None:
    config = base_config(model=MISSING_MODEL, passes=[], ship={"quantize": "int8"})
    code, _, err = cli("validate", "--config", str(write_config(tmp_path, config)), cwd=tmp_path)
    assert code == 2, err
    assert "ship.quantize: int8" in err and "ship.runtime: onnxruntime or openvino" in err


@pytest.mark.parametrize("runtime", ["torch", "onnxruntime"])
def test_int8_weights_outside_openvino_is_refused(runtime: str, tmp_path: Path) -> None:
    config = base_config(
        model=MISSING_MODEL, passes=[], ship={"runtime": runtime, "quantize": "int8-weights"}
    )
    code, _, err = cli("validate", "--config", str(write_config(tmp_path, config)), cwd=tmp_path)
    assert code == 2, err
    assert (
        f"ship.quantize: int8-weights is OpenVINO's weight compression (NNCF), and ship.runtime is {runtime}"
        in err
    )
    assert "set ship.runtime: openvino" in err and len(err.strip().splitlines()) <= 2
    # the fix the message names validates, and needs no data.calibration
    config["ship"] = {"runtime": "openvino", "quantize": "int8-weights"}
    code, out, err = cli("validate", "--config", str(write_config(tmp_path, config)), cwd=tmp_path)
    assert code == 0 and "valid" in out, err


@pytest.mark.parametrize(
    ("runtime", "quantize", "absent", "extra"),
    [
        ("onnxruntime", "none", "onnxruntime", "onnxruntime"),
        ("openvino", "none", "openvino", "openvino"),
        ("openvino", "int8", "nncf", "openvino"),
        ("openvino", "int8-weights", "nncf", "openvino"),
    ],
)
def test_a_runtime_that_is_not_installed_names_its_extra(
    runtime: str,
    quantize: str,
    absent: str,
    extra: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ci_compress.packing import runtimes

    real = runtimes._importable
    monkeypatch.setattr(runtimes, "_importable", lambda name: name != absent and real(name))
    data = {
        "holdout": {"builtin": "digits"},
        "calibration": {"builtin": "digits", "split": "train"},
    }
    config = base_config(
        model=MISSING_MODEL, passes=[], data=data, ship={"runtime": runtime, "quantize": quantize}
    )
    code, _, err = cli("validate", "--config", str(write_config(tmp_path, config)), cwd=tmp_path)
    assert code == 2, err
    assert err.startswith(f"Error: ship.runtime: {runtime} needs {absent}, which is not installed")
    assert f"pip install 'ci-compress[{extra}]'" in err


def test_the_default_runtime_leaves_the_config_dump_unchanged(tmp_path: Path) -> None:
    from ci_compress.config import to_mapping

    loaded = load_config(write_config(tmp_path, base_config()))
    assert loaded.config.ship.runtime == "torch" and loaded.config.ship.quantize == "none"
    assert set(to_mapping(loaded.config)["ship"]) == {"filename", "zstd_level", "export"}
