"""Latency and memory of a model, measured the same way for teacher and student.

Latency is the median wall time of a forward pass on one fixed batch, at a fixed
thread count, after untimed warm-up; models are timed interleaved (in turns whose order
alternates) so a slow moment of a shared runner hits all of them alike, and fast models
get more turns (as many as fit in 0.3 s, up to 1,000). The student/teacher ratio is
the median of the per-turn ratios, with an order-statistic interval
(:func:`latency_ratio`) that the gate's confident rule decides on. Memory is the bytes of every
tensor the model holds (weights, buffers, packed int8 weights): deterministic, unlike
a process's peak RSS.

The batch may be of any structure (:func:`ci_compress.layers.batches.call_model`). On a
GPU (``device``), each timed call is followed by ``torch.cuda.synchronize``: CUDA
launches are asynchronous, and a timer that does not wait measures the launch only.
A model holding torch.ao int8 modules (CPU-only kernels) is timed on the CPU.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
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
    times = latency_samples(models, batch, repeats=repeats, warmup=warmup, device=device)
    return {role: statistics.median(ts) for role, ts in times.items()}


# Fast models get more turns: as many as fit in this much timing (never fewer than
# runtime.latency_repeats, never more than MAX_TURNS). The interval of the median
# ratio narrows as 1/sqrt(turns); 1,000 turns of the demo MLP take ~0.15 s. Each turn
# times single calls: a longer sample is more often cut by the scheduler on a busy runner.
TIME_BUDGET_MS = 300.0
MAX_TURNS = 1000


def latency_samples(
    models: dict[str, nn.Module],
    batch: Inputs,
    *,
    repeats: int,
    warmup: int,
    device: str = "cpu",
) -> dict[str, list[float]]:
    """Milliseconds of one forward pass on ``batch``, per model, turn by turn.

    The models take turns, and the order within a turn alternates from one turn to the
    next (teacher first, then student first, ...), so neither model always runs on the
    caches the other just warmed. Turn ``i`` of two models is a pair taken moments
    apart: :func:`latency_ratio` works on those pairs. There are ``repeats`` turns, or
    more for fast models: as many as fit in :data:`TIME_BUDGET_MS` (at most
    :data:`MAX_TURNS`).
    """
    times: dict[str, list[float]] = {k: [] for k in models}
    with placed(models, resolve_device(device)) as where, inference(models.values()):
        inputs = {
            role: batch if d.type == "cpu" else to_device(batch, d) for role, d in where.items()
        }

        def timed(role: str, m: nn.Module) -> float:
            t0 = time.perf_counter()
            with model_errors(role, "the latency batch", inputs[role]):
                call_model(m, inputs[role])
            synchronize(where[role])
            return (time.perf_counter() - t0) * 1000.0

        for _ in range(warmup):
            for role, m in models.items():
                with model_errors(role, "the latency batch", inputs[role]):
                    call_model(m, inputs[role])
        for d in set(where.values()):
            synchronize(d)
        turns = repeats
        if repeats > 0 and TIME_BUDGET_MS > 0:
            per_turn = sum(timed(role, m) for role, m in models.items())
            fit = int(TIME_BUDGET_MS / max(per_turn, 1e-6))
            turns = max(repeats, min(MAX_TURNS, fit))
        order = list(models.items())
        for i in range(turns):
            for role, m in order if i % 2 == 0 else order[::-1]:
                times[role].append(timed(role, m))
    return times


@dataclass(frozen=True)
class LatencyRatio:
    """Student / teacher latency: the median of the paired per-repeat ratios and a
    distribution-free interval for that median.

    ``exact`` is False when there are too few repeats for any order-statistic interval
    to reach ``confidence`` (fewer than 6 at 95%): the interval is then the whole range
    of the ratios, and holds with less confidence than asked.
    """

    ratio: float
    low: float
    high: float
    repeats: int
    exact: bool


def latency_ratio(
    teacher_ms: list[float], student_ms: list[float], *, confidence: float
) -> LatencyRatio:
    """The paired ratios ``student[i] / teacher[i]``, their median and the order-statistic
    interval of the median at ``confidence``.

    Why not the ratio of the two medians: one slow moment of a shared runner moves one
    model's median and not the other's; a pair measured moments apart shares the moment,
    and the median of pairs is robust to the slow ones. The interval is the classic
    sign-test interval: with ``n`` ratios sorted, ``[r_k, r_(n-k+1)]`` where ``k`` is the
    largest rank with ``P(Binomial(n, 1/2) < k) <= (1 - confidence) / 2``; it assumes
    nothing about the timing distribution, only that the pairs are exchangeable.
    """
    ratios = sorted(s / t for t, s in zip(teacher_ms, student_ms, strict=True) if t > 0)
    n = len(ratios)
    if n == 0:
        nan = float("nan")
        return LatencyRatio(nan, nan, nan, 0, False)
    alpha = (1.0 - confidence) / 2.0
    k, cdf = 0, 0.0
    for j in range(n + 1):  # cdf = P(B < j + 1) after adding P(B = j)
        cdf += math.comb(n, j) / 2.0**n
        if cdf > alpha:
            break
        k = j + 1
    exact = k >= 1
    lo, hi = (ratios[k - 1], ratios[n - k]) if exact else (ratios[0], ratios[-1])
    return LatencyRatio(statistics.median(ratios), lo, hi, n, exact)


def model_memory_bytes(model: nn.Module) -> int:

    tensors: dict[str, torch.Tensor] = {}
    describe(model, tensors)
    return sum(t.numel() * t.element_size() for t in tensors.values())
