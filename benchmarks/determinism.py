"""Ten runs of the same gate: are the reports identical apart from timings?

    python benchmarks/determinism.py [--runs 10] [--workdir /tmp/ci-compress-determinism]

Runs the real CLI (``python -m ci_compress run``) on the demo teacher ``--runs`` times,
each into its own report folder, and prints one row per run: exit code, verdict,
accuracy drop and its interval, the shipped file's sha256, the sha256 of report.json
with timings removed (:func:`ci_compress.reporting.compare.canonical`) and the
median latencies (which are allowed to differ). Exits 1 if any run differs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ci_compress.reporting.compare import canonical  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/ci-compress-determinism"))
    args = ap.parse_args()
    from ci_compress.demo.train import prepare

    wd = args.workdir
    cfg_path = prepare(wd)
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["mlflow"] = {"enabled": False}
    cfg["thresholds"] = {**cfg["thresholds"], "decision": "confident"}
    gate = wd / "determinism.yaml"
    gate.write_text(yaml.safe_dump(cfg, sort_keys=False))
    rows = []
    for i in range(args.runs):
        out = wd / f"run{i:02d}"
        t0 = time.perf_counter()
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "ci_compress",
                "run",
                "-c",
                str(gate),
                "-q",
                "--report-dir",
                str(out),
            ],
            capture_output=True,
            text=True,
            cwd=REPO,
        )
        seconds = time.perf_counter() - t0
        report = json.loads((out / "report.json").read_text())
        d = report["deltas"]
        rows.append(
            {
                "run": i,
                "exit": proc.returncode,
                "verdict": report["verdict"],
                "drop": f"{d['delta.accuracy_drop_points']:.4f}",
                "interval": f"[{d['delta.accuracy_drop_ci_low']:.4f}, {d['delta.accuracy_drop_ci_high']:.4f}]",
                "student sha256": report["student"]["sha256"][:12],
                "report sha256 (no timings)": hashlib.sha256(
                    canonical(report).encode()
                ).hexdigest()[:12],
                "teacher ms": f"{report['teacher']['metrics']['latency_ms']:.4f}",
                "student ms": f"{report['student']['metrics']['latency_ms']:.4f}",
                "wall s": f"{seconds:.1f}",
            }
        )
    cols = list(rows[0])
    width = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    print("  ".join(c.ljust(width[c]) for c in cols))
    print("  ".join("-" * width[c] for c in cols))
    for r in rows:
        print("  ".join(str(r[c]).ljust(width[c]) for c in cols))
    same = {
        c: len({r[c] for r in rows}) == 1
        for c in ("exit", "verdict", "student sha256", "report sha256 (no timings)")
    }
    print()
    for c, ok in same.items():
        print(f"{c}: {'identical in all' if ok else 'DIFFERS across'} {len(rows)} runs")
    return 0 if all(same.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
