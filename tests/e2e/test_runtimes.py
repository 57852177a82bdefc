"""ship.runtime: the demo CNN gated as ONNX Runtime and OpenVINO serve it, int8 by their
own quantizers: the runtime artifact is what is measured, sized and reported."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ci_compress.loading.data import digits_split
from tests.helpers.cli import run_cli
from tests.helpers.configs import cnn_config, write_config

DATA = {
    "holdout": {"builtin": "digits", "split": "test"},
    "calibration": {"builtin": "digits", "split": "train"},
    "batch_size": 128,
}


def _gate(workdir: Path, runtime: str, **thresholds: Any) -> tuple[Any, dict[str, Any]]:
    cfg = cnn_config(
        passes=[],
        data=DATA,
        ship={"runtime": runtime, "quantize": "int8", "calibration_batches": 2},
        thresholds=thresholds or {"max_accuracy_drop": 2.0},
        runtime={"latency_repeats": 3, "latency_warmup": 1, "latency_batch_size": 256},
    )
    write_config(workdir, cfg)
    r = run_cli("run", "--config", "compress.yaml", cwd=workdir)
    report = json.loads((workdir / "report" / "report.json").read_text())
    return r, report


def _accuracy_in(runtime: str, files: list[Path]) -> float:
    """The holdout accuracy of the artifact, computed here with the runtime's own API."""
    x, y = digits_split("test")
    if runtime == "onnxruntime":
        import onnxruntime as ort

        session = ort.InferenceSession(str(files[0]), providers=["CPUExecutionProvider"])
        logits = session.run(None, {"input": x})[0]
    else:
        import openvino as ov

        compiled = ov.Core().compile_model(
            str(files[0]), "CPU", {"INFERENCE_PRECISION_HINT": "f32"}
        )
        logits = compiled(x)[compiled.output(0)]
    return float(np.mean(np.argmax(logits, axis=1) == y))


@pytest.mark.parametrize(
    ("runtime", "suffixes"),
    [
        ("onnxruntime", (".onnx",)),
        ("openvino", (".xml", ".bin")),
    ],
)
def test_the_runtime_artifact_is_what_is_measured(
    runtime: str, suffixes: tuple[str, ...], cnn_workdir: Path
) -> None:
    r, report = _gate(cnn_workdir, runtime)
    assert r.returncode == 0, r.stderr
    out = cnn_workdir / "report"
    serving = report["serving"]
    files = [out / f"student{s}" for s in suffixes]
    assert serving["runtime"] == runtime and serving["quantize"] == "int8"
    assert [Path(f) for f in serving["files"]] == files
    # the shipped size is the bytes the runtime loads; the .ccz is still there, and named
    on_disk = sum(f.stat().st_size for f in files)
    assert serving["file_bytes"] == on_disk == report["metrics"]["student.file_bytes"]
    assert serving["ccz_bytes"] == (out / "student.ccz").stat().st_size
    assert report["student"]["file"] == str(out / "student.ccz")
    assert report["deltas"]["delta.compression_ratio"] == pytest.approx(
        report["metrics"]["teacher.file_bytes"] / on_disk
    )
    # int8 by the runtime: the artifact is smaller than the fp32 .ccz of the same weights
    assert on_disk < serving["ccz_bytes"]
    # the student's accuracy is the artifact's, as the runtime computes it
    assert report["metrics"]["student.accuracy"] == pytest.approx(_accuracy_in(runtime, files))
    assert f"served by {runtime} int8: " in r.stdout
    assert "teacher timed in torch fp32" in r.stdout


def test_a_threshold_between_the_runtimes_accuracies_splits_the_verdict(
    cnn_workdir: Path,
) -> None:
    """The gate decides on the runtime's figures: a minimum accuracy just above what
    ONNX Runtime's int8 student measured fails it, just below passes it."""
    r, report = _gate(cnn_workdir, "onnxruntime")
    assert r.returncode == 0, r.stderr
    measured = report["metrics"]["student.accuracy"]
    r, _ = _gate(cnn_workdir, "onnxruntime", metrics={"accuracy": {"min_value": measured + 1e-4}})
    assert r.returncode == 1, r.stdout
    r, _ = _gate(cnn_workdir, "onnxruntime", metrics={"accuracy": {"min_value": measured - 1e-4}})
    assert r.returncode == 0, r.stdout


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_the_same_inputs_give_the_same_artifact(runtime: str, cnn_workdir: Path) -> None:
    _, first = _gate(cnn_workdir, runtime)
    _, second = _gate(cnn_workdir, runtime)
    assert first["serving"]["sha256"] == second["serving"]["sha256"]
    assert first["metrics"]["student.accuracy"] == second["metrics"]["student.accuracy"]
    assert first["verdict"] == second["verdict"]


def test_the_champion_is_re_measured_in_the_same_runtime(cnn_workdir: Path) -> None:
    """The champion's .ccz (here: this very student's, as the registry would hand it
    back) is converted and quantized as the candidate is, beside the download, and
    measured in the runtime: the same figures as the candidate's."""
    from ci_compress.ci.env import detect
    from ci_compress.config import load_config
    from ci_compress.pipeline import _compress_and_evaluate

    _, first = _gate(cnn_workdir, "openvino")
    champion = cnn_workdir / "champion" / "student.ccz"
    champion.parent.mkdir()
    champion.write_bytes((cnn_workdir / "report" / "student.ccz").read_bytes())
    loaded = load_config(cnn_workdir / "compress.yaml")
    report = _compress_and_evaluate(
        loaded,
        cnn_workdir / "again",
        detect({}, cnn_workdir),
        lambda _: None,
        lambda w: pytest.fail(w),
        champion_file=champion,
    )
    assert report.champion is not None
    artifact = [champion.with_suffix(".xml"), champion.with_suffix(".bin")]
    assert report.champion.metrics["file_bytes"] == sum(p.stat().st_size for p in artifact)
    assert report.champion.metrics["accuracy"] == report.student.metrics["accuracy"]
    assert report.champion.metrics["accuracy"] == first["metrics"]["student.accuracy"]


@pytest.mark.slow
def test_minilm_keyword_inputs_served_by_openvino_int8(tmp_path: Path) -> None:
    """input_ids + attention_mask reach the runtime by name, batch free; NNCF's
    transformer setting keeps the int8 embeddings close to the teacher's."""
    from tests.helpers.real_models import minilm_embedding

    cfg = {"version": 1, **minilm_embedding(tmp_path)}
    cfg["data"]["calibration"] = cfg["data"]["holdout"]
    cfg |= {
        "passes": [],
        "thresholds": {"metrics": {"cosine": {"min_value": 0.95}}},
        "mlflow": {"enabled": False},
        "report": {"dir": "report"},
        "ship": {"runtime": "openvino", "quantize": "int8", "calibration_batches": 2},
        "runtime": {"latency_repeats": 3, "latency_warmup": 1, "latency_batch_size": 8},
    }
    write_config(tmp_path, cfg)
    r = run_cli("run", "--config", "compress.yaml", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["serving"]["runtime"] == "openvino"
    assert 0.95 <= report["metrics"]["student.cosine"] < 1.0
    assert report["metrics"]["student.file_bytes"] < report["serving"]["ccz_bytes"] / 2


@pytest.mark.slow
def test_runtimes_benchmark_reports_every_row(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.helpers import REPO

    out = tmp_path / "runtimes.json"
    args = ["--models", "mlp", "--repeats", "3", "--json", str(out)]
    proc = subprocess.run(
        [sys.executable, "benchmarks/runtimes.py", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())
    variants = [r["variant"] for r in rows]
    assert variants[0] == "fp32 teacher (torch)" and variants[-1].startswith("peer: NNCF")
    assert {"ci-compress onnxruntime int8", "ci-compress openvino int8"} <= set(variants)
    assert all(r["cpu_ms"] > 0 and r["bytes"] > 0 and 0.9 < r["accuracy"] <= 1 for r in rows)
    assert "| mlp | ci-compress openvino int8 |" in proc.stdout


class _Keywords(torch.nn.Module):
    """A custom class with keyword inputs: its .ccz ships a graph (no factory needed)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = torch.nn.Linear(8, 16), torch.nn.Linear(16, 3)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(input_ids * attention_mask)))


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_a_student_rebuilt_from_its_shipped_graph_converts_to_the_runtime(
    tmp_path: Path, runtime: str
) -> None:
    """Tracing cannot run a graph with a symbolic batch size; the converters get the
    torch.export program instead, and serve any batch size."""
    from ci_compress.packing.export import holds_graph
    from ci_compress.packing.file import load_packed, pack
    from ci_compress.packing.runtimes import _to_onnxruntime, _to_openvino, load

    torch.manual_seed(0)
    model = _Keywords().eval()
    example = {"input_ids": torch.randn(4, 8), "attention_mask": torch.ones(4, 8)}
    pack(model, tmp_path / "s.ccz", example=example)
    rebuilt, _ = load_packed(tmp_path / "s.ccz")
    assert holds_graph(rebuilt) and not holds_graph(model)
    convert = _to_onnxruntime if runtime == "onnxruntime" else _to_openvino
    files = convert(rebuilt, example, tmp_path, "student", "none", [], None)
    served = load(runtime, files, threads=1)
    batch = {"input_ids": torch.randn(7, 8), "attention_mask": torch.ones(7, 8)}
    with torch.no_grad():
        assert torch.allclose(served(**batch), model(**batch), atol=1e-5)


class _Embedder(torch.nn.Module):
    """An embedding table (most of the parameters, as in a transformer) and two Linears."""

    def __init__(self) -> None:
        super().__init__()
        self.table = torch.nn.Embedding(1000, 256)
        self.a, self.b = torch.nn.Linear(256, 256), torch.nn.Linear(256, 64)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(self.table(input_ids)))).mean(1)


def test_int8_weights_ship_a_quarter_of_the_bytes_computing_the_same(tmp_path: Path) -> None:
    """ship.quantize: int8-weights in OpenVINO: every weight, the embedding table's too,
    stored as int8 (the file about 4x smaller than the fp32 one), outputs within int8
    rounding of the fp32 artifact's; no calibration data needed."""
    from ci_compress.packing.runtimes import serve

    torch.manual_seed(0)
    model = _Embedder().eval()
    example = {"input_ids": torch.randint(0, 1000, (4, 16))}
    fp32 = serve(model, "openvino", tmp_path, "fp32", example)
    int8 = serve(model, "openvino", tmp_path, "int8w", example, quantize="int8-weights")
    assert int8.quantize == "int8-weights"
    assert 3.7 < fp32.file_bytes / int8.file_bytes <= 4.0
    # the table is stored as 8-bit integers (not only the MatMuls)
    xml = (tmp_path / "int8w.xml").read_text()
    assert 'element_type="u8" shape="1000, 256"' in xml, xml[:2000]
    batch = {"input_ids": torch.randint(0, 1000, (9, 16))}
    with torch.no_grad():
        want, got, exact = model(**batch), int8.module(**batch), fp32.module(**batch)
    assert torch.allclose(exact, want, atol=1e-5)
    error = (got - want).abs().max().item()
    assert 0 < error < 0.02 * want.abs().max().item()


def test_int8_weights_in_another_runtime_is_a_config_error(tmp_path: Path) -> None:
    from ci_compress.errors import ConfigError
    from ci_compress.packing.runtimes import serve

    example = {"input_ids": torch.randint(0, 1000, (4, 16))}
    with pytest.raises(ConfigError, match="int8-weights is OpenVINO's") as e:
        serve(_Embedder(), "onnxruntime", tmp_path, "s", example, quantize="int8-weights")
    assert e.value.path == "ship.quantize"
