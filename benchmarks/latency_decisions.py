"""Ten runs of the same latency gate: does the decision flip on noise?

    python benchmarks/latency_decisions.py [--runs 10] [--limit 1.2] [--workdir /tmp/ci-compress-latency]

Runs the real CLI (``python -m ci_compress run``) on the demo teacher (prune 50% +
int8-dynamic, the README's example) ``--runs`` times with ``max_latency_ratio: LIMIT``
under ``thresholds.decision: confident``, each into its own report folder, and prints
one row per run:

* the ratio of the two medians (how ``delta.latency_ratio`` was computed before issue
  16) and the decision a point comparison of it with the limit gives;
* the median of the paired per-repeat ratios (``delta.latency_ratio`` now), its
  order-statistic interval, and the latency check's outcome under the confident rule
  (pass / fail / inconclusive), which is what the gate decides.

Exits 1 if the confident outcomes differ across runs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CLI = [sys.executable, "-m", "ci_compress", "run"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--limit", type=float, default=1.2)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/ci-compress-latency"))
    args = ap.parse_args()
    from ci_compress.demo.train import prepare

    wd = args.workdir
    cfg_path = prepare(wd)
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["mlflow"] = {"enabled": False}
    cfg["thresholds"] = {"max_latency_ratio": args.limit, "decision": "confident"}
    gate = wd / "latency.yaml"
    gate.write_text(yaml.safe_dump(cfg, sort_keys=False))
    rows = []
    for i in range(args.runs):
        out = wd / f"run{i:02d}"
        t0 = time.perf_counter()
        proc = subprocess.run(
            [*CLI, "-c", str(gate), "-q", "--report-dir", str(out)],
            capture_output=True,
            text=True,
            cwd=REPO,
        )
        seconds = time.perf_counter() - t0
        report = json.loads((out / "report.json").read_text())
        d = report["deltas"]
        t_ms = report["teacher"]["metrics"]["latency_ms"]
        s_ms = report["student"]["metrics"]["latency_ms"]
        old = s_ms / t_ms
        check = next(c for c in report["gate"]["checks"] if c["threshold"] == "max_latency_ratio")
        rows.append(
            {
                "run": i,
                "exit": proc.returncode,
                "ratio of medians": f"{old:.3f}",
                "point decision": "pass" if old <= args.limit else "fail",
                "median paired ratio": f"{d['delta.latency_ratio']:.3f}",
                "95% interval": f"[{d['delta.latency_ratio_ci_low']:.3f}, {d['delta.latency_ratio_ci_high']:.3f}]",
                "confident decision": check["outcome"],
                "wall s": f"{seconds:.1f}",
            }
        )
    cols = list(rows[0])
    width = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    print(f"max_latency_ratio: {args.limit}, {len(rows)} runs of the same gate")
    print("  ".join(c.ljust(width[c]) for c in cols))
    print("  ".join("-" * width[c] for c in cols))
    for r in rows:
        print("  ".join(str(r[c]).ljust(width[c]) for c in cols))
    print()
    for c in ("point decision", "confident decision", "exit"):
        counts = Counter(str(r[c]) for r in rows)
        print(f"{c}: " + ", ".join(f"{k} {v}/{len(rows)}" for k, v in sorted(counts.items())))
    return 0 if len({r["confident decision"] for r in rows}) == 1 else 1


if __name__ == "__main__":
    raise SystemExit(main())
