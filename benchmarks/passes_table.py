"""Measured effect of each pass on the demo MLP and CNN: parameters, shipped bytes,
accuracy and latency of the model rebuilt from its .ccz file.

    python benchmarks/passes_table.py            # both models, markdown table on stdout
    python benchmarks/passes_table.py --smoke    # two MLP rows, a few turns (the test runs it)

Teachers are trained deterministically (seed 0) on the digits train split; accuracy is
on the digits test split; latency is the median of 60 paired ratios student/teacher, batches of 64 on one
thread, timed in alternating turns (ratios, not absolute times: the machine is shared).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.helpers.passes_support import accuracy, apply, params, ship, split, teacher

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


def latency_ratio(
    teacher: torch.nn.Module, student: torch.nn.Module, x: torch.Tensor, turns: int = 60
) -> tuple[float, float]:
    """Median teacher ms and the median of paired student/teacher ratios.

    Teacher and student are timed in turns, the order alternating within each turn, so a
    slow moment of a shared machine hits both halves of a pair (as the gate does).
    """

    def once(model: torch.nn.Module) -> float:
        t = time.perf_counter()
        model(x)
        return time.perf_counter() - t

    teacher_ms, ratios = [], []
    with torch.no_grad():
        for _ in range(5):
            teacher(x)
            student(x)
        for turn in range(turns):
            if turn % 2:
                s, t = once(student), once(teacher)
            else:
                t, s = once(teacher), once(student)
            teacher_ms.append(t * 1000)
            ratios.append(s / t)
    return statistics.median(teacher_ms), statistics.median(ratios)


def main() -> None:
    smoke = "--smoke" in sys.argv[1:]  # two recipes on the MLP, few turns: the test's run
    kinds = ("mlp",) if smoke else ("mlp", "cnn")
    recipes = [RECIPES[0], RECIPES[3]] if smoke else RECIPES
    turns = 6 if smoke else 60
    torch.set_num_threads(1)
    x = split("test")[0][:64]
    print(f"load average at the start: {[round(v, 2) for v in os.getloadavg()]}")
    print(
        "| model | passes | parameters | shipped bytes | accuracy % "
        "| latency / teacher (64, paired) |"
    )
    print("|---|---|---:|---:|---:|---:|")
    for kind in kinds:
        fp32 = teacher(kind)
        with tempfile.TemporaryDirectory() as d:
            reference, _ = ship(fp32, Path(d))
        for label, passes in recipes:
            model, _ = apply(teacher(kind), *passes) if passes else (teacher(kind), [])
            with tempfile.TemporaryDirectory() as d:
                shipped, info = ship(model, Path(d))
            teacher_ms, ratio = latency_ratio(reference, shipped, x, turns)
            print(
                f"| {kind} | {label} | {params(shipped)} | {info.file_bytes} | "
                f"{accuracy(shipped):.2f} | {ratio:.2f}x (teacher {teacher_ms:.3f} ms) |",
                flush=True,
            )
    print(f"load average at the end: {[round(v, 2) for v in os.getloadavg()]}")


if __name__ == "__main__":
    main()
