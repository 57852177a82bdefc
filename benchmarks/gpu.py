"""The same gate on the CPU and on a GPU, when this machine has one.

    python benchmarks/gpu.py [--model mlp|cnn]

Runs ``ci-compress run`` on the demo (prune 0.5 + int8-dynamic is CPU-only in torch, so
the GPU comparison uses prune 0.5 + fp16, which a GPU runs) twice, ``runtime.device:
cpu`` and ``runtime.device: cuda``, in fresh processes, and prints accuracy, latency
and wall time side by side. The verdicts must agree: the holdout's digest, the shipped
file and the accuracy are the same on both devices up to float rounding.

Without a usable GPU it measures nothing and says why in one line (a CPU-only torch
build, or no CUDA device visible), exiting 0: this project's CI machine has no GPU, so
the figures in docs/performance.md come from whoever runs this on one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def gpu_status() -> str | None:
    """None when a CUDA device is usable, else why not (one line)."""
    import torch

    if torch.version.cuda is None:
        return f"no GPU measured: this torch ({torch.__version__}) is a CPU-only build"
    if not torch.cuda.is_available():
        return f"no GPU measured: torch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA device"
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=["mlp", "cnn"], default="mlp")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(REPO))
    why = gpu_status()
    if why is not None:
        print(why)
        return 0
    import yaml

    from ci_compress.demo.train import prepare

    with tempfile.TemporaryDirectory(prefix="ci-compress-gpu-") as tmp:
        demo = Path(tmp) / "demo"
        prepare(demo, kind=args.model)
        base = yaml.safe_load((demo / "compress.yaml").read_text())
        base.update(
            mlflow={"enabled": False},
            passes=[{"type": "prune", "amount": 0.5}, {"type": "quantize", "scheme": "fp16"}],
        )
        rows = {}
        for device in ("cpu", "cuda"):
            cfg = demo / f"{device}.yaml"
            config = {
                **base,
                "runtime": {**base.get("runtime", {}), "device": device},
                "report": {"dir": f"report-{device}"},
            }
            cfg.write_text(yaml.safe_dump(config))
            env = {**os.environ, "PYTHONPATH": str(REPO)}
            t0 = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, "-m", "ci_compress", "run", "--config", str(cfg), "--quiet"],
                cwd=demo,
                env=env,
                capture_output=True,
                text=True,
            )
            wall = time.perf_counter() - t0
            if proc.returncode not in (0, 1, 5):
                print(proc.stderr, file=sys.stderr)
                return proc.returncode
            report = json.loads((demo / f"report-{device}" / "report.json").read_text())
            rows[device] = {
                "verdict": report["verdict"],
                "accuracy": report["student"]["metrics"]["accuracy"],
                "student_latency_ms": report["student"]["metrics"]["latency_ms"],
                "teacher_latency_ms": report["teacher"]["metrics"]["latency_ms"],
                "holdout_sha256": report["holdout"]["sha256"],
                "wall_s": wall,
            }
    print(f"demo {args.model}, prune 0.5 + fp16, the same gate on two devices")
    print("  device  verdict       accuracy  teacher ms  student ms   wall s")
    for device, r in rows.items():
        print(
            f"  {device:<6}  {r['verdict']:<12}  {100 * r['accuracy']:7.2f}%  "
            f"{r['teacher_latency_ms']:10.3f}  {r['student_latency_ms']:10.3f}  {r['wall_s']:7.1f}"
        )
    same = rows["cpu"]["holdout_sha256"] == rows["cuda"]["holdout_sha256"]
    print(
        f"  same holdout digest: {same}; same verdict: {rows['cpu']['verdict'] == rows['cuda']['verdict']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
