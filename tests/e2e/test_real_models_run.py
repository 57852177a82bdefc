"""``ci-compress run`` gating real models of every kind of task, end to end.

The models of ``tests/e2e/test_real_models.py`` (built by ``tests/helpers/real_models.py``),
now through the CLI: compress, pack, reload, evaluate with the task, decide on
``thresholds.metrics``, write report.json, report.md and junit.xml, record in MLflow.

* a regression MLP on scikit-learn's diabetes data, pruned and int8-quantized: the same
  student passes, is inconclusive (confident rule) or fails as the limit on the mean
  absolute error tightens, and the real MLflow server holds ``student.mae``;
* all-MiniLM-L6-v2 (the PyPI wheel) as an embedding model, int8-dynamic, on
  ``input_ids`` + ``attention_mask`` dict batches: cosine and neighbour agreement;
* a tiny GPT-2 on perplexity, int8-dynamic.

Each test prints its measurements (``pytest -s``); docs/measurements.md ("Real models")
records them.
"""

from __future__ import annotations

import json
import re
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.cli import run_cli
from tests.helpers.configs import write_config
from tests.helpers.real_models import diabetes_regressor, minilm_embedding, tiny_gpt2
from tests.helpers.servers import MlflowServer

pytestmark = pytest.mark.slow

FAST = {"latency_repeats": 5, "latency_warmup": 1, "latency_batch_size": 16}


def gate(folder: Path, config: dict[str, Any], *extra: str) -> tuple[int, dict[str, Any], float]:
    """``ci-compress run`` on ``config`` written into ``folder``: exit code, report, seconds."""
    path = write_config(folder, {"version": 1, "report": {"dir": "report"}, **config})
    t0 = time.perf_counter()
    result = run_cli("run", "--config", str(path), "--quiet", *extra, cwd=folder)
    seconds = round(time.perf_counter() - t0, 1)
    assert result.returncode in (0, 1, 5), result.stderr
    report = json.loads((folder / "report" / "report.json").read_text())
    return result.returncode, report, seconds


def measured(name: str, report: dict[str, Any], code: int, seconds: float) -> None:
    d = report["deltas"]
    print(
        f"\nMEASURED {name}: "
        + json.dumps(
            {
                "exit_code": code,
                "teacher": report["teacher"]["metrics"],
                "student": report["student"]["metrics"],
                "statistics": report["statistics"],
                "teacher_bytes": report["teacher"]["file_bytes"],
                "student_bytes": report["student"]["file_bytes"],
                "ratio": d["delta.compression_ratio"],
                "latency_ratio": d.get("delta.latency_ratio"),
                "seconds": seconds,
            },
            sort_keys=True,
        )
    )


def junit_cases(folder: Path) -> dict[str, bool]:
    """Test case name -> passed, from the gate's junit.xml."""
    root = ET.parse(folder / "report" / "junit.xml").getroot()
    return {case.attrib["name"]: case.find("failure") is None for case in root.iter("testcase")}


# ---------------------------------------------------------------- regression

REGRESSION: dict[str, Any] = {
    "model": {"path": "reg.safetensors", "factory": "regressors:regressor"},
    "data": {"holdout": {"path": "holdout.npz"}},
    "task": {"type": "regression"},
    "passes": [{"type": "prune", "amount": 0.5}, {"type": "quantize", "scheme": "int8-dynamic"}],
    "runtime": FAST,
}


def test_regression_gate_passes_is_inconclusive_or_fails_as_the_mae_limit_tightens(
    tmp_path: Path, mlflow_server: MlflowServer
) -> None:
    from mlflow import MlflowClient

    diabetes_regressor(tmp_path)
    mlflow = {
        "enabled": True,
        "tracking_uri": mlflow_server.uri,
        "experiment": "e2e-regression",
        "registered_model": "diabetes-regressor",
    }

    def with_limit(limit: float) -> dict[str, Any]:
        return {
            **REGRESSION,
            "thresholds": {
                "metrics": {
                    "mae": {"max_relative_increase": limit},
                    "r2": {"min_value": 0.1},
                },
                "min_compression_ratio": 2.0,
                "decision": "confident",
            },
            "mlflow": mlflow,
        }

    code, report, seconds = gate(tmp_path, with_limit(0.5), "--promote")
    measured("diabetes-regression-prune-0.5-int8-dynamic-run", report, code, seconds)
    assert code == 0, report["gate"]
    t, s = report["teacher"]["metrics"], report["student"]["metrics"]
    assert {"mae", "rmse", "r2"} <= set(s) and "accuracy" not in s
    assert s["mae"] > t["mae"]  # half the weights gone: the errors grow
    st = report["statistics"]
    assert st["metric"] == "mae" and not st["higher_is_better"]
    assert st["change_ci_low"] > 0  # and the paired bootstrap is sure of it
    d = report["deltas"]
    assert d["delta.mae.relative_increase"] == pytest.approx(s["mae"] / t["mae"] - 1)
    assert "delta.accuracy_drop_points" not in d and "delta.mae.drop" not in d
    checks = {c["threshold"]: c for c in report["gate"]["checks"]}
    assert set(checks) == {
        "metrics.mae.max_relative_increase",
        "metrics.r2.min_value",
        "min_compression_ratio",
    }
    mae = checks["metrics.mae.max_relative_increase"]
    assert (mae["ci_low"], mae["ci_high"]) == (
        d["delta.mae.relative_increase_ci_low"],
        d["delta.mae.relative_increase_ci_high"],
    )
    assert junit_cases(tmp_path) == dict.fromkeys(checks, True)
    md = (tmp_path / "report" / "report.md").read_text()
    assert "mean absolute error" in md and "`metrics.mae.max_relative_increase`" in md
    # MLflow holds the task's metrics under the report's names
    run = MlflowClient(tracking_uri=mlflow_server.uri).get_run(report["mlflow"]["run_id"])
    logged = run.data.metrics
    assert logged["student.mae"] == pytest.approx(s["mae"])
    assert logged["delta.mae.relative_increase"] == pytest.approx(d["delta.mae.relative_increase"])
    assert logged["gate.passed"] == 1.0 and run.data.tags["ci_compress.verdict"] == "pass"
    assert report["registry"]["promoted"]  # version 1 holds @champion

    # a limit inside the interval: the confident rule cannot tell (exit 5); the
    # champion (the same student, from the registry) is re-measured with the task
    middle = (mae["ci_low"] + mae["ci_high"]) / 2
    code, report, _ = gate(tmp_path, with_limit(middle))
    assert code == 5 and report["verdict"] == "inconclusive", report["gate"]
    assert report["champion"]["metrics"]["mae"] == pytest.approx(s["mae"])
    assert report["baseline"]["status"] == "compared" and report["baseline"]["version"] == "1"
    # the champion measures what its own run recorded: no warning about it
    assert not [w for w in report["warnings"] if "champion" in w], report["warnings"]

    # a limit under the whole interval: the gate fails, in every format
    code, report, _ = gate(tmp_path, with_limit(mae["ci_low"] / 2))
    assert code == 1 and report["verdict"] == "fail"
    failed = [c["threshold"] for c in report["gate"]["checks"] if c["outcome"] == "fail"]
    assert failed == ["metrics.mae.max_relative_increase"]
    assert junit_cases(tmp_path)["metrics.mae.max_relative_increase"] is False
    run = MlflowClient(tracking_uri=mlflow_server.uri).get_run(report["mlflow"]["run_id"])
    assert run.data.metrics["gate.passed"] == 0.0


def test_accuracy_thresholds_on_regression_are_config_errors(tmp_path: Path) -> None:
    diabetes_regressor(tmp_path)
    config = {**REGRESSION, "thresholds": {"max_accuracy_drop": 1.0}, "mlflow": {"enabled": False}}
    path = write_config(tmp_path, {"version": 1, **config})
    for command in ("run", "explain", "tune"):
        result = run_cli(command, "--config", str(path), "--quiet", cwd=tmp_path)
        assert result.returncode == 2
        assert "thresholds.max_accuracy_drop: reads top-1 accuracy" in result.stderr
    assert not (tmp_path / "report" / "report.json").exists()


def test_tune_on_regression_constrains_trials_by_the_gate_and_reports_the_mae(
    tmp_path: Path,
) -> None:
    import optuna

    diabetes_regressor(tmp_path)
    limit = 0.03
    config = {
        **REGRESSION,
        "thresholds": {
            "metrics": {"mae": {"max_increase": limit}},
            "min_compression_ratio": 1.5,
        },
        "mlflow": {"enabled": False},
        "tune": {"space": {"passes[0].amount": {"low": 0.05, "high": 0.9}}, "max_trials": 4},
    }
    path = write_config(tmp_path, {"version": 1, **config})
    result = run_cli("tune", "--config", str(path), cwd=tmp_path)
    assert result.returncode in (0, 1), result.stderr
    storage = f"sqlite:///{tmp_path / 'ci-compress-tune.db'}"
    trials = optuna.load_study(study_name=path.stem, storage=storage).get_trials()
    assert len(trials) == 4
    measured_trials = [t for t in trials if "metrics" in t.user_attrs]
    assert measured_trials
    for t in measured_trials:
        m = t.user_attrs["metrics"]
        print(f"\nMEASURED diabetes-regression-tune trial {t.number}: {json.dumps(m)}")
        assert {"teacher.mae", "student.mae", "delta.mae.increase"} <= set(m)
        assert "student.accuracy" not in m
        if t.state == optuna.trial.TrialState.COMPLETE:
            # the trial's constraint is the gate's check on the mae increase
            assert t.user_attrs["passed"] == (
                m["delta.mae.increase"] <= limit and m["delta.compression_ratio"] >= 1.5
            )
            names = ["metrics.mae.max_increase", "min_compression_ratio"]  # sorted
            constraints = dict(zip(names, t.user_attrs["constraints"], strict=True))
            assert constraints["metrics.mae.max_increase"] == pytest.approx(
                (m["delta.mae.increase"] - limit) / limit
            )
    # the progress lines, the summary and the report speak of the mae
    # e.g. "[   2.9s] trial 1: pass, 864 bytes, mae 0.4722 (increase 0.0131)"
    lines = [line for line in result.stderr.splitlines() if "] trial " in line]
    measured_lines = [line for line in lines if " bytes, " in line]
    assert len(measured_lines) == 4, result.stderr
    assert all(re.search(r"bytes, mae \d\.\d+ \(increase -?\d", line) for line in measured_lines)
    assert "accuracy" not in result.stderr + result.stdout
    md = (tmp_path / "ci-compress-tune" / "tune-report.md").read_text()
    assert "| trial | passes | bytes | mae | gate |" in md and "## mae versus size" in md
    assert "accuracy" not in md
    if result.returncode == 0:
        assert "best passing config: trial" in result.stdout and "mae " in result.stdout
        assert "| mae increase |" in md
        assert (tmp_path / "tuned.yaml").exists()


def test_explain_on_regression_ranks_layers_by_the_mae_increase(tmp_path: Path) -> None:
    diabetes_regressor(tmp_path)
    config = {
        **REGRESSION,
        "thresholds": {"metrics": {"mae": {"max_increase": 0.02}}},
        "mlflow": {"enabled": False},
        "report": {"dir": "report"},
    }
    path = write_config(tmp_path, {"version": 1, **config})
    result = run_cli("explain", "--config", str(path), "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    data = json.loads((tmp_path / "report" / "explain.json").read_text())
    print(f"\nMEASURED diabetes-regression-explain: {json.dumps(data, sort_keys=True)}")
    assert data["metric"] == {"task": "regression", "name": "mae", "higher_is_better": False}
    layers = data["layers"]
    assert [s["layer"] for s in layers] == sorted(
        ["0", "2"], key=lambda name: -next(s["drop_points"] for s in layers if s["layer"] == name)
    )
    teacher_mae = data["teacher_accuracy"]
    assert 0.1 < teacher_mae < 1.5  # mean absolute error, in hundreds of units
    for s in layers:  # the mae increase, in the metric's own units, not points
        assert s["drop_points"] == pytest.approx(s["accuracy"] - teacher_mae)
        assert s["worst_class"] is None
    assert layers[0]["drop_points"] >= layers[1]["drop_points"]
    full = data["full"]
    assert full["drop_points"] == pytest.approx(full["figures"]["delta.mae.increase"])
    assert "delta.accuracy_drop_points" not in full["figures"]
    # measured: the full compression raises the mae by 0.052, the last layer alone by
    # 0.043, the first by 0.010: excluding the last meets the 0.02 limit
    assert not full["accuracy_passed"] and full["failures"]
    assert data["suggested_exclude"] == [layers[0]["layer"]] == ["2"]
    last = data["steps"][-1]
    assert last["accuracy_passed"] and last["drop_points"] <= 0.02
    # the table, the Markdown and the notes speak of mae, not accuracy
    table = result.stdout
    assert "mae increase" in table and "drop (pts)" not in table and "%" not in table
    assert f"configured compression: mae increase {full['drop_points']:.4g}" in table
    assert "(mae thresholds FAILED)" in table
    assert f"suggested exclude: ['2'] -> mae increase {last['drop_points']:.4g}" in table
    md = (tmp_path / "report" / "explain.md").read_text()
    assert "mae increase on the holdout, most sensitive first" in md
    assert "| mae increase | mae |" in md
    assert "accuracy" not in md
    assert (tmp_path / "report" / "sensitivity.png").stat().st_size > 0

    # a gate asks for the same analysis (explain.when) instead of refusing the task
    code, report, _ = gate(tmp_path, {**config, "explain": {"when": "always"}})
    assert code == 1  # the configured compression fails the 0.02 limit
    assert report["explain"]["metric"]["name"] == "mae"
    assert report["explain"]["suggested_exclude"] == ["2"]


# ---------------------------------------------------------------- embedding


def test_minilm_embeddings_gated_on_cosine_through_run(tmp_path: Path) -> None:
    config: dict[str, Any] = {
        **minilm_embedding(tmp_path),
        "passes": [{"type": "quantize", "scheme": "int8-dynamic"}],
        "thresholds": {
            "metrics": {
                "cosine": {"min_value": 0.95},
                "neighbour_agreement": {"min_value": 0.8},
            },
            "min_compression_ratio": 1.5,
        },
        "ship": {"zstd_level": 3},
        "runtime": FAST,  # MLflow on: a sqlite store beside the config
    }
    code, report, seconds = gate(tmp_path, config)
    measured("minilm-embedding-int8-dynamic-run", report, code, seconds)
    assert code == 0, report["gate"]
    assert report["mlflow"]["run_id"]
    t, s = report["teacher"]["metrics"], report["student"]["metrics"]
    assert t["cosine"] == pytest.approx(1.0) and 0.95 <= s["cosine"] < 1.0
    assert s["neighbour_agreement"] >= 0.8
    assert report["statistics"]["metric"] == "cosine"
    assert report["holdout"]["x_dtype"] == "int64"
    assert report["metrics"]["student.cosine"] == s["cosine"]
    assert report["metrics"]["delta.cosine.drop"] == pytest.approx(1.0 - s["cosine"], abs=1e-9)
    cases = junit_cases(tmp_path)
    assert cases == {
        "metrics.cosine.min_value": True,
        "metrics.neighbour_agreement.min_value": True,
        "min_compression_ratio": True,
    }
    # the same student against a limit it cannot meet: 1e-6 of cosine lost at most
    strict = {
        **config,
        "thresholds": {"metrics": {"cosine": {"max_drop": 1e-6}}, "decision": "confident"},
    }
    code, report, _ = gate(tmp_path, strict)
    assert code == 1, report["gate"]
    (check,) = report["gate"]["checks"]
    assert check["threshold"] == "metrics.cosine.max_drop" and check["outcome"] == "fail"
    assert check["ci_low"] > 1e-6  # failed with confidence, on the paired interval


# ---------------------------------------------------------------- language model

LANGUAGE_MODEL: dict[str, Any] = {
    "model": {"path": "lm", "hf": {"auto_class": "AutoModelForCausalLM"}},
    "data": {
        "holdout": {"path": "holdout.npz", "inputs": {"input_ids": "input_ids"}, "target": None},
        "batch_size": 16,
    },
    "task": {"type": "language-model"},
    "passes": [{"type": "quantize", "scheme": "int8-dynamic"}],
    "ship": {"zstd_level": 3},
    "runtime": FAST,  # MLflow on: a sqlite store beside the config
}


def test_tiny_gpt2_gated_on_perplexity_through_run(tmp_path: Path) -> None:
    tiny_gpt2(tmp_path)
    config = {
        **LANGUAGE_MODEL,
        "thresholds": {
            "metrics": {
                "perplexity": {"max_relative_increase": 0.05},
                "next_token_agreement": {"min_value": 0.9},
            },
            "decision": "confident",
        },
    }
    code, report, seconds = gate(tmp_path, config)
    measured("tiny-gpt2-int8-dynamic-run", report, code, seconds)
    assert code == 0, report["gate"]
    assert report["mlflow"]["run_id"]
    t, s = report["teacher"]["metrics"], report["student"]["metrics"]
    assert t["perplexity"] < 40 and s["perplexity"] <= t["perplexity"] * 1.05
    assert report["metrics"]["student.perplexity"] == s["perplexity"]
    assert report["statistics"]["metric"] == "nll"
    checks = {c["threshold"]: c for c in report["gate"]["checks"]}
    ppl = checks["metrics.perplexity.max_relative_increase"]
    assert ppl["metric"] == "delta.perplexity.relative_increase"
    # the NLL interval bounds the perplexity's: decided with confidence, not on the point
    assert ppl["ci_low"] is not None and ppl["ci_high"] < 0.05
    assert checks["metrics.next_token_agreement.min_value"]["ci_low"] is None
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| perplexity |" in md and "per-sample nll" in md
    # every next token the teacher predicts: the int8 student differs on a few
    strict = {**config, "thresholds": {"metrics": {"next_token_agreement": {"min_value": 1.0}}}}
    code, report, _ = gate(tmp_path, strict)
    assert code == 1, report["gate"]
    assert junit_cases(tmp_path) == {"metrics.next_token_agreement.min_value": False}


# Runs the CLI as if torchao were not installed (CI's fresh venv has no torchao; this
# machine's may): PathFinder no longer finds it, so importlib.util.find_spec("torchao")
# is None, which is how transformers decides whether to import it.
WITHOUT_TORCHAO = """
import sys
from importlib.machinery import PathFinder

class WithoutTorchao(PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.split(".")[0] == "torchao":
            return None
        return super().find_spec(name, path, target)

sys.meta_path[:] = [WithoutTorchao if f is PathFinder else f for f in sys.meta_path]
from ci_compress.cli import main
sys.exit(main())
"""


def test_hf_gate_without_torchao_has_a_clean_stderr_and_warns_of_untied_weights(
    tmp_path: Path,
) -> None:
    """torchao is not a dependency: a gate on a Hugging Face model runs without it, and
    its stderr holds our lines only (no "Failed to load ... .so" from torchao's C
    extensions, no pytree Enum warnings). Quantizing GPT-2's tied input table says it
    unties the output layer."""
    import subprocess
    import sys

    from tests.helpers.cli import console_env

    tiny_gpt2(tmp_path)
    config = {
        **LANGUAGE_MODEL,
        "passes": [
            {"type": "quantize", "scheme": "int8-weight-only", "include": ["transformer.wte"]}
        ],
        "thresholds": {"metrics": {"perplexity": {"max_relative_increase": 0.05}}},
        "mlflow": {"enabled": False},
    }
    path = write_config(tmp_path, {"version": 1, "report": {"dir": "report"}, **config})
    proc = subprocess.run(
        [sys.executable, "-c", WITHOUT_TORCHAO, "run", "--config", str(path)],
        cwd=tmp_path,
        env=console_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Failed to load" not in proc.stderr and "Enum subclass" not in proc.stderr
    noise = [
        line
        for line in proc.stderr.splitlines()
        if line.strip() and not re.match(r"\[\s*[0-9.]+s\] ", line)
    ]
    assert noise == [], noise  # every stderr line is one of our progress lines
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert "torchao" not in report["reproducibility"]["versions"]
    (untied,) = [w for w in report["warnings"] if "tied weights" in w]
    assert "lm_head and transformer.wte shared one weight tensor" in untied
    assert "transformer.wte only, lm_head keeps the float copy" in untied
    assert f"warning: {untied}" in proc.stderr
