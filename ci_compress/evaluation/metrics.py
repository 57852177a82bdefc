"""Task metrics for several models over one pass of the holdout.

All models see the same batches in the same order (paired predictions), under
``torch.inference_mode()``. Only what the metrics need is kept: per sample, whether
each model was right and whether it agreed with the teacher (booleans), never the
whole holdout's outputs. Per-class (per-label) counts are accumulated batch by batch
(two integer vectors of length ``classes`` per model).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ci_compress.errors import DataError, ModelOutputError
from ci_compress.layers.inference import inference

if TYPE_CHECKING:
    from collections.abc import Callable

    import numpy as np
    import torch
    from torch import nn

    from ci_compress.loading.data import Dataset


@dataclass
class TaskMetrics:
    samples: int
    correct: int
    accuracy: float
    agreement: float | None = None  # with the teacher; None for the teacher itself
    correct_mask: np.ndarray | None = field(default=None, repr=False)
    class_correct: np.ndarray | None = field(default=None, repr=False)  # per label
    class_total: np.ndarray | None = field(default=None, repr=False)  # per label

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
    on_batch: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
) -> dict[str, TaskMetrics]:
    """Top-1 accuracy of every model and agreement with ``reference``, streaming batches.

    ``on_batch(x, y)`` is called once per batch after the models have seen it: the
    pipeline uses it to hash the holdout and report progress in the same single pass.
    """
    import numpy as np
    import torch

    masks: dict[str, list[np.ndarray]] = {k: [] for k in models}
    agree: dict[str, int] = dict.fromkeys(models, 0)
    per_class: dict[str, np.ndarray] = {}
    class_total = np.zeros(0, dtype=np.int64)
    n = 0
    for m in models.values():
        m.eval()
    with inference(models.values()):
        for x, y in data.batches(batch_size):
            preds = {}
            for role, model in models.items():
                out = _forward(model, x, role, data.field)
                if out.dim() != 2 or out.shape[0] != len(y):
                    raise ModelOutputError(
                        f"the {role} model returned shape {tuple(out.shape)} for a batch of {len(y)} samples; expected (samples, classes)",
                        hint=f"check {data.field} matches the model's input (x shape {tuple(x.shape)})",
                    )
                if int(y.max()) >= out.shape[1]:
                    raise DataError(
                        f"{data.field}: label {int(y.max())} is out of range for a model with {out.shape[1]} outputs",
                        hint="labels must be 0 .. classes-1",
                    )
                if not bool(torch.isfinite(out).all()):
                    raise ModelOutputError(
                        f"the {role} model produced NaN or infinite outputs on {data.field}",
                        hint="the model or a compression pass is numerically broken",
                    )
                preds[role] = out.argmax(dim=1)
                hit = (preds[role] == y).numpy()
                masks[role].append(hit)
                per_class[role] = _add(
                    per_class.get(role), np.bincount(y.numpy()[hit], minlength=out.shape[1])
                )
            for role in models:
                agree[role] += int((preds[role] == preds[reference]).sum())
            class_total = _add(class_total, np.bincount(y.numpy(), minlength=1))
            n += len(y)
            if on_batch is not None:
                on_batch(x, y)
    if n == 0:
        raise DataError(
            f"{data.field}: no samples to evaluate", hint="give a holdout with at least one sample"
        )
    result = {}
    for role in models:
        mask = np.concatenate(masks[role])
        correct = int(mask.sum())
        result[role] = TaskMetrics(
            samples=n,
            correct=correct,
            accuracy=correct / n,
            agreement=None if role == reference else agree[role] / n,
            correct_mask=mask,
            class_correct=_pad(per_class[role], len(class_total)),
            class_total=_pad(class_total, len(per_class[role])),
        )
    return result


def _pad(a: np.ndarray, n: int) -> np.ndarray:
    import numpy as np

    if len(a) >= n:
        return a
    padded: np.ndarray = np.concatenate([a, np.zeros(n - len(a), dtype=a.dtype)])
    return padded


def _add(acc: np.ndarray | None, counts: np.ndarray) -> np.ndarray:
    """Element-wise sum of two count vectors of possibly different lengths."""
    if acc is None:
        return counts.astype("int64")
    n = max(len(acc), len(counts))
    total: np.ndarray = _pad(acc, n) + _pad(counts.astype("int64"), n)
    return total


def _forward(model: nn.Module, x: object, role: str, field: str = "the holdout") -> torch.Tensor:
    import torch

    try:
        out = model(x)
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        first = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
        raise ModelOutputError(
            f"the {role} model failed on {field}: {first}",
            hint="check the holdout's x shape and dtype match what the model expects",
        ) from None
    if isinstance(out, tuple | list):
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise ModelOutputError(
            f"the {role} model returned {type(out).__name__}, expected a tensor of logits"
        )
    return out
