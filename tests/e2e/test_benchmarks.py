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

import pytest

from tests.helpers import REPO


@pytest.mark.slow
def test_benchmark_smoke_run_reports_every_row(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, "benchmarks/run.py", "--smoke", "--json", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
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
