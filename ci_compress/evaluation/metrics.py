"""Task metrics for several models over one pass of the holdout.

All models see the same batches in the same order (paired predictions), under
``torch.inference_mode()``. Batches may be of any structure and each model's output
goes through the output adapter (``model.output``); the task
(:mod:`ci_compress.evaluation.tasks`, classification by default) turns outputs and
targets into per-sample scores and named metrics. Only what the metrics need is kept:
per sample, one score per model, never the whole holdout's outputs.

Models run on ``runtime.device``; one that holds torch.ao int8 modules (CPU-only
kernels) stays on the CPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ci_compress.errors import CICompressError, DataError, ModelOutputError
from ci_compress.evaluation.tasks import Classification, Task
from ci_compress.layers.batches import (
    Inputs,
    call_model,
    describe,
    resolve_device,
    take,
    to_device,
)
from ci_compress.layers.batches import batch_size as samples_in
from ci_compress.layers.inference import inference, placed
from ci_compress.layers.outputs import OutputSpec, select_output

if TYPE_CHECKING:
    from collections.abc import Callable

    import numpy as np
    import torch
    from torch import nn

    from ci_compress.loading.data import Dataset


@dataclass
class TaskMetrics:
    """One model's result on the holdout.

    ``samples``, ``correct``, ``accuracy``, ``agreement``, ``correct_mask`` and the
    per-class counts are classification's figures (the gate, the report and explain
    read them by these names); for any other task ``accuracy`` is NaN and ``correct``
    0, and the task's figures are in ``metrics`` (by name) and ``scores`` (per sample).
    """

    samples: int
    correct: int
    accuracy: float
    agreement: float | None = None  # with the teacher; None for the teacher itself
    correct_mask: np.ndarray | None = field(default=None, repr=False)
    class_correct: np.ndarray | None = field(default=None, repr=False)  # per label
    class_total: np.ndarray | None = field(default=None, repr=False)  # per label
    metrics: dict[str, float] = field(default_factory=dict)
    scores: np.ndarray | None = field(default=None, repr=False)  # per-sample primary score
    task: str = "classification"

    def class_accuracy(self) -> dict[str, float]:
        """Accuracy per label (as a string key), for every label the holdout contains."""
        if self.class_correct is None or self.class_total is None:
            return {}
        return {
            str(k): int(self.class_correct[k]) / int(self.class_total[k])
            for k in range(len(self.class_total))
            if self.class_total[k] > 0
        }

    def class_counts(self) -> dict[str, tuple[int, int]]:
        """(correct, samples) per label present in the holdout."""
        if self.class_correct is None or self.class_total is None:
            return {}
        return {
            str(k): (int(self.class_correct[k]), int(self.class_total[k]))
            for k in range(len(self.class_total))
            if self.class_total[k] > 0
        }


def score(
    models: dict[str, nn.Module],
    data: Dataset,
    *,
    batch_size: int,
    reference: str = "teacher",
    on_batch: Callable[[Any, Any], None] | None = None,
    task: Task | None = None,
    output: OutputSpec = None,
    device: str = "cpu",
) -> dict[str, TaskMetrics]:
    """The task's metrics for every model (agreement-like ones against ``reference``).

    ``on_batch(inputs, target)`` is called once per batch after the models have seen
    it: the pipeline uses it to hash the holdout and report progress in the same single
    pass. ``task`` defaults to top-1 classification (what ci-compress always measured),
    ``output`` is ``model.output``, ``device`` is ``runtime.device``.
    """
    import numpy as np

    task = task or Classification()
    dev = resolve_device(device)
    for m in models.values():
        if training(m):
            m.eval()
    run = task.start(list(models), reference, data.field)
    # the data set already checks every batch's target with this task's check (as
    # stages.load_inputs opens the holdout): not twice per batch
    check_target = None if data.check_target == task.check_target else task.check_target
    n = 0
    with placed(models, dev) as where, inference(models.values()):
        on_cpu = dev.type == "cpu"
        # the device each model's inputs go to; None: the CPU, where they are read
        runs = [
            (role, model, None if where[role].type == "cpu" else where[role])
            for role, model in models.items()
        ]
        for x, y in data.batches(batch_size):
            if check_target is not None:
                check_target(y, data.field)
            outputs = {
                role: _forward(model, x if d is None else to_device(x, d), role, data.field, output)
                for role, model, d in runs
            }
            run.add(outputs, y if on_cpu or y is None else y.to(dev), x if on_cpu else _on(x, dev))
            n += samples_in(x)
            if on_batch is not None:
                on_batch(x, y)
    if n == 0:
        raise DataError(
            f"{data.field}: no samples to evaluate", hint="give a holdout with at least one sample"
        )
    result = {}
    for role, r in run.finish().items():
        if task.type == "classification":
            mask = r.scores.astype(bool)
            result[role] = TaskMetrics(
                samples=r.samples,
                correct=int(np.count_nonzero(mask)),
                accuracy=r.metrics["accuracy"],
                agreement=None if role == reference else r.metrics["agreement"],
                correct_mask=mask,
                class_correct=r.class_correct,
                class_total=r.class_total,
                metrics=r.metrics,
                scores=r.scores,
            )
        else:
            result[role] = TaskMetrics(
                samples=r.samples,
                correct=0,
                accuracy=float(np.nan),
                metrics=r.metrics,
                scores=r.scores,
                task=task.type,
            )
    return result


def training(model: nn.Module) -> bool:
    """Whether any module of ``model`` is in training mode. ``eval()`` on a model already
    in eval mode sets every module's flag again through ``Module.__setattr__``: 0.1 ms
    for the demo MLP, a fixed cost of every evaluation (``benchmarks/holdout_scale.py``)."""
    return any(m.training for m in model.modules())


def _on(x: Inputs, device: torch.device) -> Inputs:
    return x if device.type == "cpu" else to_device(x, device)


def probe(model: nn.Module, data: Dataset, *, output: OutputSpec = None, samples: int = 8) -> float:
    """Run ``model`` (the teacher) twice on the first few samples, at load; returns the
    largest difference between the two outputs (0.0 for a deterministic model).

    A model that cannot take the data fails here, before any pass runs, with its own
    message and the data set's name (exit 3): token ids to a float model, a missing
    keyword argument, a wrong shape. A model whose outputs differ on the same inputs
    (dropout left on, random operations) makes every figure of the gate noise: the
    caller warns.
    """
    import torch

    first = data.first_batch(samples)
    if first is None:
        return 0.0
    x, _ = first
    model.eval()
    batch = take(x, 0, samples)
    with inference([model]):
        a = _forward(model, batch, "teacher", data.field, output)
        b = _forward(model, batch, "teacher", data.field, output)
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)) or a.shape != b.shape:
        return 0.0
    if not (a.is_floating_point() or a.is_complex()):
        return float((a != b).sum().item())
    diff = (a.double() - b.double()).abs()
    tolerance = 1e-5 * (1.0 + a.double().abs())
    return float(diff.max().item()) if bool((diff > tolerance).any().item()) else 0.0


def _forward(
    model: nn.Module,
    x: Inputs,
    role: str,
    field: str = "the holdout",
    output: OutputSpec = None,
) -> torch.Tensor:
    try:  # model_errors, without a context manager's cost on every batch
        out = call_model(model, x)
    except CICompressError:
        raise
    except Exception as e:
        raise _model_error(e, role, field, x) from None
    return select_output(out, output, role=role)


# What a model that cannot take the data usually raises (the message says enough);
# any other exception is named by its type.
_USUAL = (RuntimeError, ValueError, TypeError, IndexError, KeyError, AttributeError)


@contextlib.contextmanager
def model_errors(role: str, field: str, x: Inputs) -> Iterator[None]:
    """A model's forward that raises (any exception: an ``assert`` in its code, a
    ``ZeroDivisionError``, a shape error) is the model's failure on the data, exit 3,
    naming the model; never "a bug in ci-compress"."""
    try:
        yield
    except CICompressError:
        raise
    except Exception as e:
        raise _model_error(e, role, field, x) from None


def _model_error(e: Exception, role: str, field: str, x: Inputs) -> ModelOutputError:
    text = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
    first = text if isinstance(e, _USUAL) and text else type(e).__name__
    if text and not isinstance(e, _USUAL):
        first += f": {text}"
    what = "x shape and dtype" if not isinstance(x, tuple | list | Mapping) else "inputs"
    return ModelOutputError(
        f"the {role} model failed on {field}: {first}",
        hint=f"check the holdout's {what} match what the model expects (got {describe(x)}), and the model's forward",
    )
