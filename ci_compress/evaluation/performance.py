"""Latency and memory of a model, measured the same way for teacher and student.

Latency is the median wall time of a forward pass on one fixed batch, at a fixed
thread count, after untimed warm-up; models are timed interleaved (round-robin) so a
slow moment of a shared runner hits all of them alike. Memory is the bytes of every
tensor the model holds (weights, buffers, packed int8 weights): deterministic, unlike
a process's peak RSS.

The batch may be of any structure (:func:`ci_compress.layers.batches.call_model`). On a
GPU (``device``), each timed call is followed by ``torch.cuda.synchronize``: CUDA
launches are asynchronous, and a timer that does not wait measures the launch only.
A model holding torch.ao int8 modules (CPU-only kernels) is timed on the CPU.
"""

from __future__ import annotations

import statistics
import time
from typing import TYPE_CHECKING

from ci_compress.evaluation.metrics import model_errors
from ci_compress.layers.batches import Inputs, call_model, resolve_device, synchronize, to_device
from ci_compress.layers.inference import inference, placed
from ci_compress.packing.file import describe

if TYPE_CHECKING:
    import torch
    from torch import nn


def latency_ms(
    models: dict[str, nn.Module],
    batch: Inputs,
    *,
    repeats: int,
    warmup: int,
    device: str = "cpu",
) -> dict[str, float]:
    """Median milliseconds of one forward pass on ``batch``, per model."""
    times: dict[str, list[float]] = {k: [] for k in models}
    with placed(models, resolve_device(device)) as where, inference(models.values()):
        inputs = {
            role: batch if d.type == "cpu" else to_device(batch, d) for role, d in where.items()
        }
        for _ in range(warmup):
            for role, m in models.items():
                with model_errors(role, "the latency batch", inputs[role]):
                    call_model(m, inputs[role])
        for d in set(where.values()):
            synchronize(d)
        for _ in range(repeats):
            for role, m in models.items():
                t0 = time.perf_counter()
                with model_errors(role, "the latency batch", inputs[role]):
                    call_model(m, inputs[role])
                synchronize(where[role])
                times[role].append((time.perf_counter() - t0) * 1000.0)
    return {role: statistics.median(ts) for role, ts in times.items()}


def model_memory_bytes(model: nn.Module) -> int:

    tensors: dict[str, torch.Tensor] = {}
    describe(model, tensors)
    return sum(t.numel() * t.element_size() for t in tensors.values())
