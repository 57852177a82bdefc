"""EVALUATE: every model measured from one pass over the holdout, then timed and counted.

:func:`measure` streams the holdout once for all models (teacher, shipped student, a
champion): the task metrics, the holdout's sha256 and the progress come from the same
batches, so a large holdout is read once and never held in memory. Then it times the
models on one fixed batch (interleaved, see :mod:`ci_compress.evaluation.performance`)
and counts their parameters and tensor memory. :func:`compare` turns the paired
per-sample results into the statistics of the drop and the per-class figures.

Nothing here decides: :func:`ci_compress.gate.decide` does, on these figures.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ci_compress.evaluation.classes import PerClass, class_figures, per_class_table
from ci_compress.evaluation.metrics import TaskMetrics, score
from ci_compress.evaluation.performance import latency_samples, model_memory_bytes
from ci_compress.evaluation.statistics import (
    PairedScoreStatistics,
    PairedStatistics,
    paired_score_statistics,
    paired_statistics,
)
from ci_compress.evaluation.tasks import Task
from ci_compress.layers.batches import Inputs, take
from ci_compress.layers.batches import batch_size as samples_in
from ci_compress.layers.inspect import count_parameters
from ci_compress.layers.outputs import OutputSpec
from ci_compress.loading.data import HoldoutDigest
from ci_compress.progress import Step

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ci_compress.loading.data import Dataset


@dataclass(frozen=True)
class Candidate:
    """A model to measure: the module as it will serve, and the bytes of its file."""

    module: nn.Module
    file_bytes: int


@dataclass(frozen=True)
class Measurements:
    """What :func:`measure` found, per role (``teacher``, ``student``, ``champion``)."""

    task: Mapping[str, TaskMetrics]
    # role -> accuracy, correct, samples, file_bytes, parameters, nonzero_parameters,
    # sparsity, latency_ms, memory_bytes, bits_per_weight (+ agreement with the teacher)
    figures: Mapping[str, Mapping[str, float]]
    holdout_sha256: str
    samples: int
    example: Inputs  # the inputs of the timed batch (exports trace with it)
    example_targets: torch.Tensor | None  # None for a task without targets
    # role -> the milliseconds of each timed repeat (interleaved: repeat i of every
    # role was taken in the same turn)
    latency_samples: Mapping[str, tuple[float, ...]] = field(default_factory=dict)


def measure(
    models: Mapping[str, Candidate],
    holdout: Dataset,
    *,
    batch_size: int,
    latency_batch: int,
    repeats: int,
    warmup: int,
    step: Step | None = None,
    before_latency: Callable[[Mapping[str, TaskMetrics]], None] | None = None,
    task: Task | None = None,
    output: OutputSpec = None,
    device: str = "cpu",
) -> Measurements:
    """Score every model on the holdout in one streaming pass, then time and count them.

    ``before_latency`` sees the task metrics before the (slow) timing; it may raise to
    abandon the measurement (``ci-compress tune`` prunes a hopeless trial this way).
    ``task`` (classification by default), ``output`` (``model.output``) and ``device``
    (``runtime.device``) go to :func:`~ci_compress.evaluation.metrics.score`; batches
    may be of any structure.
    """
    modules = {role: c.module for role, c in models.items()}
    results, holdout_sha256 = evaluate(
        modules,
        holdout,
        batch_size=batch_size,
        step=step,
        task=task,
        output=output,
        device=device,
    )
    x, y = next(holdout.batches(latency_batch))
    x, y = take(x, 0, latency_batch), (None if y is None else y[:latency_batch])
    if before_latency is not None:
        before_latency(results)
    times = latency_samples(modules, x, repeats=repeats, warmup=warmup, device=device)
    lat = {role: statistics.median(ts) for role, ts in times.items()}
    return Measurements(
        task=results,
        figures={
            role: _figures(results[role], c.module, c.file_bytes, lat[role])
            for role, c in models.items()
        },
        holdout_sha256=holdout_sha256,
        samples=results[next(iter(results))].samples,
        example=x,
        example_targets=y,
        latency_samples={role: tuple(ts) for role, ts in times.items()},
    )


def evaluate(
    models: Mapping[str, nn.Module],
    holdout: Dataset,
    *,
    batch_size: int,
    step: Step | None = None,
    task: Task | None = None,
    output: OutputSpec = None,
    device: str = "cpu",
) -> tuple[dict[str, TaskMetrics], str]:
    """The gate's evaluation pass: every model's task metrics and the holdout's digest,
    in one streaming read (``benchmarks/holdout_scale.py`` times this against a bare
    inference loop)."""
    digest, total, seen = HoldoutDigest(), holdout.size_hint(), [0]

    def on_batch(x: Inputs, y: torch.Tensor | None) -> None:
        digest.update(x, y)
        seen[0] += samples_in(x)
        if step is not None:
            step("evaluating", seen[0], total)

    results = score(
        dict(models),
        holdout,
        batch_size=batch_size,
        on_batch=on_batch,
        task=task,
        output=output,
        device=device,
    )
    if step is not None and total is None:
        step("evaluating", seen[0], seen[0])
    return results, digest.hexdigest()


def _figures(m: TaskMetrics, model: nn.Module, file_bytes: int, latency: float) -> dict[str, float]:
    """One role's figures: classification's historical ones (``accuracy``, ``correct``,
    ``agreement``), or the task's metrics by name (``mae``, ``perplexity``, ...), then
    samples, sizes, latency and memory."""
    params, nonzero = count_parameters(model)
    task: dict[str, float] = (
        {"accuracy": m.accuracy, "correct": float(m.correct)}
        if m.task == "classification"
        else {k: float(v) for k, v in m.metrics.items()}
    )
    out: dict[str, float] = {
        **task,
        "samples": float(m.samples),
        "file_bytes": float(file_bytes),
        "parameters": float(params),
        "nonzero_parameters": float(nonzero),
        "sparsity": 1.0 - nonzero / params if params else 0.0,
        "latency_ms": latency,
        "memory_bytes": float(model_memory_bytes(model)),
        "bits_per_weight": 8 * file_bytes / params if params else 0.0,
    }
    if m.agreement is not None and m.task == "classification":
        out["agreement"] = m.agreement
    return out


@dataclass(frozen=True)
class Paired:
    """The student against the teacher, sample by sample: how sure the drop is, and
    which classes it hits."""

    statistics: PairedStatistics | PairedScoreStatistics
    class_deltas: Mapping[str, float]  # delta.max_class_drop_points
    class_notes: Mapping[str, str]  # the gate's note naming the worst class
    per_class: PerClass | None
    # intervals derived from the primary metric's (the language model's perplexity)
    metric_deltas: Mapping[str, float] = field(default_factory=dict)

    def deltas(self) -> dict[str, float]:
        """Every ``delta.*`` figure of the comparison (report, MLflow, gate)."""
        return {**self.metric_deltas, **self.statistics.deltas(), **self.class_deltas}


def compare(
    task: Mapping[str, TaskMetrics],
    *,
    confidence: float,
    resamples: int,
    seed: int,
    max_class_drop: float | None = None,
    scored: Task | None = None,
) -> Paired:
    """Paired statistics of the change and, for classification, the per-class figures.

    ``scored`` is the task (classification when None). Classification keeps its
    historical figures: McNemar and the bootstrap of the accuracy drop, per class. Any
    other task gets the paired bootstrap and t-test of its per-sample primary score
    (:func:`~ci_compress.evaluation.statistics.paired_score_statistics`); the language
    model's interval of the NLL increase also bounds its perplexity (perplexity =
    exp(NLL), so the increase maps through exp) in ``metric_deltas``.
    """
    if scored is not None and scored.type != "classification":
        return _compare_scores(task, scored, confidence=confidence, resamples=resamples, seed=seed)
    return _compare_classes(
        task, confidence=confidence, resamples=resamples, seed=seed, max_class_drop=max_class_drop
    )


def _compare_scores(
    task: Mapping[str, TaskMetrics],
    scored: Task,
    *,
    confidence: float,
    resamples: int,
    seed: int,
) -> Paired:
    teacher, student = task["teacher"], task["student"]
    assert teacher.scores is not None and student.scores is not None
    stats = paired_score_statistics(
        teacher.scores,
        student.scores,
        metric=scored.primary,
        higher_is_better=scored.higher_is_better,
        confidence=confidence,
        resamples=resamples,
        seed=seed,
    )
    figures: dict[str, float] = {}
    if scored.type == "language-model" and "perplexity" in teacher.metrics:
        ppl = teacher.metrics["perplexity"]
        for end in ("low", "high"):
            change = getattr(stats, f"change_ci_{end}")
            factor = math.exp(min(change, 700.0)) - 1.0
            figures[f"delta.perplexity.relative_increase_ci_{end}"] = factor
            figures[f"delta.perplexity.increase_ci_{end}"] = ppl * factor
    return Paired(
        statistics=stats,
        class_deltas={},
        class_notes={},
        per_class=None,
        metric_deltas=figures,
    )


def _compare_classes(
    task: Mapping[str, TaskMetrics],
    *,
    confidence: float,
    resamples: int,
    seed: int,
    max_class_drop: float | None = None,
) -> Paired:
    """Paired statistics of the accuracy drop and the per-class figures and table."""
    stats = paired_statistics(
        task["teacher"].correct_mask,  # type: ignore[arg-type]
        task["student"].correct_mask,  # type: ignore[arg-type]
        confidence=confidence,
        resamples=resamples,
        seed=seed,
    )
    class_deltas, notes = class_figures(task["teacher"], task["student"], limit=max_class_drop)
    return Paired(
        statistics=stats,
        class_deltas=class_deltas,
        class_notes=notes,
        per_class=per_class_table(task, max_class_drop=max_class_drop),
    )
