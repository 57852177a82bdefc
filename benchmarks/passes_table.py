"""Measured effect of each pass on the demo MLP and CNN: parameters, shipped bytes,
accuracy and latency of the model rebuilt from its .ccz file.

    python benchmarks/passes_table.py            # both models, markdown table on stdout

Teachers are trained deterministically (seed 0) on the digits train split; accuracy is
on the digits test split; latency is the median of 50 timed batches of 64 on one thread.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.passes_support import accuracy, apply, params, ship, split, teacher

RECIPES: list[tuple[str, list[dict]]] = [
    ("teacher (fp32)", []),
    ("prune 50% unstructured", [{"type": "prune", "amount": 0.5}]),
    (
        "prune 80% gradual + fine-tune",
        [{"type": "prune", "amount": 0.8, "steps": 4, "fine_tune_epochs": 2}],
    ),
    ("prune 50% structured", [{"type": "prune", "amount": 0.5, "structured": True}]),
    (
        "prune 50% structured + fine-tune",
        [{"type": "prune", "amount": 0.5, "structured": True, "fine_tune_epochs": 5}],
    ),
    ("quantize int8-dynamic", [{"type": "quantize", "scheme": "int8-dynamic"}]),
    ("quantize int8-static", [{"type": "quantize", "scheme": "int8-static"}]),
    ("quantize int8-weight-only", [{"type": "quantize", "scheme": "int8-weight-only"}]),
    ("quantize fp16", [{"type": "quantize", "scheme": "fp16"}]),
    ("quantize bf16", [{"type": "quantize", "scheme": "bf16"}]),
    ("cluster 4 bits", [{"type": "cluster", "bits": 4}]),
    ("lowrank energy 0.95", [{"type": "lowrank", "energy": 0.95}]),
    ("distill width 0.25 (alpha 0.9, T 4)", [{"type": "distill", "width": 0.25, "epochs": 15}]),
    (
        "same student, labels only (alpha 0)",
        [{"type": "distill", "width": 0.25, "epochs": 15, "alpha": 0.0}],
    ),
    (
        "prune 80% gradual + cluster 4 bits",
        [
            {"type": "prune", "amount": 0.8, "steps": 4, "fine_tune_epochs": 2},
            {"type": "cluster", "bits": 4},
        ],
    ),
]


def latency_ms(model: torch.nn.Module, x: torch.Tensor, repeats: int = 50) -> float:
    times = []
    with torch.no_grad():
        for _ in range(5):
            model(x)
        for _ in range(repeats):
            t = time.perf_counter()
            model(x)
            times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def main() -> None:
    torch.set_num_threads(1)
    x = split("test")[0][:64]
    print("| model | passes | parameters | shipped bytes | accuracy % | latency ms (64) |")
    print("|---|---|---:|---:|---:|---:|")
    for kind in ("mlp", "cnn"):
        for label, passes in RECIPES:
            model, _ = apply(teacher(kind), *passes) if passes else (teacher(kind), [])
            with tempfile.TemporaryDirectory() as d:
                shipped, info = ship(model, Path(d))
            print(
                f"| {kind} | {label} | {params(shipped)} | {info.file_bytes} | "
                f"{accuracy(shipped):.2f} | {latency_ms(shipped, x):.3f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
