"""The baseline: the demo gate's work as a bare PyTorch script, with no tool around it.

Same teacher weights, same digits holdout (scikit-learn's split, seed 0), same work as
``ci-compress run`` on the demo config: prune 50% of the Linear weights by global
magnitude, quantize the Linear layers to int8 dynamic (per output channel), save the
student, evaluate teacher and student on the holdout (accuracy, agreement) under
``torch.inference_mode()`` and time both at batch 64 (median of 30 after 5 warm-ups).
It does not import ci_compress. Prints one JSON line with its results.

    python benchmarks/bare_script.py WEIGHTS.safetensors OUT_DIR [--hidden 256 128]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn


def mlp(hidden: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = 64
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, 10))
    return nn.Sequential(*layers)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("weights", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--hidden", type=int, nargs="+", default=[256, 128])
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)

    x, y = load_digits(return_X_y=True)
    _, x_te, _, y_te = train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)
    xt = torch.from_numpy((x_te / 16.0).astype(np.float32))
    yt = torch.from_numpy(y_te.astype(np.int64))

    teacher = mlp(args.hidden)
    teacher.load_state_dict(load_file(str(args.weights)))
    teacher.eval()

    student = mlp(args.hidden)
    student.load_state_dict(teacher.state_dict())
    linears = [m for m in student.modules() if isinstance(m, nn.Linear)]
    with torch.no_grad():
        flat = torch.cat([m.weight.reshape(-1) for m in linears])
        k = round(0.5 * flat.numel())
        threshold = flat.abs().kthvalue(k).values
        for m in linears:
            m.weight.mul_((m.weight.abs() > threshold).to(m.weight.dtype))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        student = quantize_dynamic(student, {nn.Linear: per_channel_dynamic_qconfig})
    student.eval()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "student.pt"
    torch.save(student.state_dict(), path)

    correct = {"teacher": 0, "student": 0}
    agree = 0
    with torch.inference_mode():
        for i in range(0, len(yt), args.batch_size):
            xb, yb = xt[i : i + args.batch_size], yt[i : i + args.batch_size]
            pt = teacher(xb).argmax(1)
            ps = student(xb).argmax(1)
            correct["teacher"] += int((pt == yb).sum())
            correct["student"] += int((ps == yb).sum())
            agree += int((pt == ps).sum())
        xb = xt[:64]
        times: dict[str, list[float]] = {"teacher": [], "student": []}
        for _ in range(args.warmup):
            teacher(xb), student(xb)
        for _ in range(args.repeats):
            for name, m in (("teacher", teacher), ("student", student)):
                t0 = time.perf_counter()
                m(xb)
                times[name].append((time.perf_counter() - t0) * 1000)
    n = len(yt)
    print(
        json.dumps(
            {
                "samples": n,
                "teacher_accuracy": correct["teacher"] / n,
                "student_accuracy": correct["student"] / n,
                "agreement": agree / n,
                "student_bytes": path.stat().st_size,
                "latency_ms": {k: statistics.median(v) for k, v in times.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
