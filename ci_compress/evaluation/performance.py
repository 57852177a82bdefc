"""Latency and memory of a model, measured the same way for teacher and student.

Latency is the median wall time of a forward pass on one fixed batch, at a fixed
thread count, after untimed warm-up; models are timed interleaved (round-robin) so a
slow moment of a shared runner hits all of them alike. Memory is the bytes of every
tensor the model holds (weights, buffers, packed int8 weights): deterministic, unlike
a process's peak RSS.
"""

from __future__ import annotations

import statistics
import time
from typing import TYPE_CHECKING

from ci_compress.layers.inference import inference
from ci_compress.packing.file import describe

if TYPE_CHECKING:
    import torch
    from torch import nn


def latency_ms(
    models: dict[str, nn.Module], batch: torch.Tensor, *, repeats: int, warmup: int
) -> dict[str, float]:

    times: dict[str, list[float]] = {k: [] for k in models}
    with inference(models.values()):
        for _ in range(warmup):
            for m in models.values():
                m(batch)
        for _ in range(repeats):
            for role, m in models.items():
                t0 = time.perf_counter()
                m(batch)
                times[role].append((time.perf_counter() - t0) * 1000.0)
    return {role: statistics.median(ts) for role, ts in times.items()}


def model_memory_bytes(model: nn.Module) -> int:

    tensors: dict[str, torch.Tensor] = {}
    describe(model, tensors)
    return sum(t.numel() * t.element_size() for t in tensors.values())
