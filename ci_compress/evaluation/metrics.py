"""Task metrics for several models over one pass of the holdout.

All models see the same batches in the same order (paired predictions), under
``torch.inference_mode()``. Only what the metrics need is kept: per sample, whether
each model was right and whether it agreed with the teacher (booleans), never the
whole holdout's outputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ci_compress.errors import DataError, ModelOutputError

if TYPE_CHECKING:
    from collections.abc import Callable

    import numpy as np
    import torch
    from torch import nn

    from ci_compress.artifacts.data import Dataset


@dataclass
class TaskMetrics:
    samples: int
    correct: int
    accuracy: float
    agreement: float | None = None  # with the teacher; None for the teacher itself
    correct_mask: np.ndarray | None = field(default=None, repr=False)


def evaluate(
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
    n = 0
    for m in models.values():
        m.eval()
    with torch.inference_mode():
        for x, y in data.batches(batch_size):
            preds = {}
            for role, model in models.items():
                out = _forward(model, x, role)
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
                masks[role].append((preds[role] == y).numpy())
            for role in models:
                agree[role] += int((preds[role] == preds[reference]).sum())
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
        )
    return result


def _forward(model: nn.Module, x: object, role: str) -> object:
    import torch

    try:
        out = model(x)
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        first = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
        raise ModelOutputError(
            f"the {role} model failed on the holdout: {first}",
            hint="check the holdout's x shape and dtype match what the model expects",
        ) from None
    if isinstance(out, tuple | list):
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise ModelOutputError(
            f"the {role} model returned {type(out).__name__}, expected a tensor of logits"
        )
    return out
