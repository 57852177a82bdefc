"""Batches of any structure: what a model's inputs look like, and the one way to call it.

A batch is ``(inputs, target)``. ``inputs`` is what ``forward`` takes:

* a tensor: ``model(x)`` (today's single-tensor models);
* a tuple or list of tensors: positional arguments, ``model(*inputs)``;
* a mapping of names to tensors: keyword arguments, ``model(**inputs)`` (a Hugging Face
  model's ``input_ids`` and ``attention_mask``).

``target`` is a tensor, or None for tasks that need none (embedding agreement, a
language model predicting its own shifted ``input_ids``). Every tensor of ``inputs``
holds the same number of samples along its first dimension; the batch size is read from
the first one.

Passes, evaluation, latency and exports all go through :func:`call_model`, so none of
them guesses at shapes. This module sits in ``layers/`` (a leaf) because passes may not
import ``loading`` or ``evaluation``; it loads torch only on use, so the pass table and
the config loader stay torch-free.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from ci_compress.errors import ConfigError, DataError

if TYPE_CHECKING:
    import torch

Inputs: TypeAlias = (
    "torch.Tensor | tuple[torch.Tensor, ...] | list[torch.Tensor] | Mapping[str, torch.Tensor]"
)
"""A model's inputs: a tensor, positional tensors, or keyword tensors."""

Batch: TypeAlias = "tuple[Inputs, torch.Tensor | None]"
"""``(inputs, target)``; target None for tasks that need none."""

Device = Literal["cpu", "cuda", "auto"]


def call_model(model: Callable[..., Any], inputs: Inputs) -> Any:
    """Run ``model`` on ``inputs``: one tensor, positional tensors, or keyword tensors."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, tuple | list):
        return model(*inputs)
    return model(inputs)


def named_tensors(inputs: Inputs) -> list[tuple[str, torch.Tensor]]:
    """The input tensors with stable names, in a fixed order.

    A single tensor is ``""``, positional ones ``"0"``, ``"1"``, ..., keyword ones their
    names **sorted** (``forward`` receives them by name, so the order a mapping was
    built in does not matter, and the digest must not depend on it either).
    """
    if isinstance(inputs, Mapping):
        return [(str(k), inputs[k]) for k in sorted(inputs)]
    if isinstance(inputs, tuple | list):
        return [(str(i), t) for i, t in enumerate(inputs)]
    return [("", inputs)]


def map_tensors(inputs: Inputs, fn: Callable[[torch.Tensor], torch.Tensor]) -> Inputs:
    """The same structure with ``fn`` applied to every tensor."""
    if isinstance(inputs, Mapping):
        return {k: fn(v) for k, v in inputs.items()}
    if isinstance(inputs, tuple | list):
        return type(inputs)(fn(t) for t in inputs)
    return fn(inputs)


def first_tensor(inputs: Inputs) -> torch.Tensor:
    """The tensor the batch size and the report's input shape are read from."""
    if isinstance(inputs, Mapping):
        return next(iter(inputs.values()))
    if isinstance(inputs, tuple | list):
        return inputs[0]
    return inputs


def batch_size(inputs: Inputs) -> int:
    """Samples in the batch: the first tensor's first dimension.

    ``shape[0]``, not ``len()``: ``Tensor.__len__`` is Python code (a tracing check),
    4x the cost, and evaluation asks this several times per batch. A 0-d tensor still
    raises ``len()``'s TypeError."""
    t = first_tensor(inputs)
    shape = t.shape
    return shape[0] if shape else len(t)


def take(inputs: Inputs, start: int, stop: int) -> Inputs:
    """Samples ``start:stop`` of every tensor (a view, no copy)."""
    return map_tensors(inputs, lambda t: t[start:stop])


def select(inputs: Inputs, index: torch.Tensor) -> Inputs:
    """The samples at ``index`` (a 1-D integer tensor) of every tensor."""
    return map_tensors(inputs, lambda t: t[index])


def concat(parts: Sequence[Inputs]) -> Inputs:
    """Batches of one structure joined along the sample dimension."""
    import torch

    columns: dict[str, list[torch.Tensor]] = {}
    for part in parts:
        for name, t in named_tensors(part):
            columns.setdefault(name, []).append(t)
    joined = {name: torch.cat(ts) for name, ts in columns.items()}
    head = parts[0]
    if isinstance(head, Mapping):
        return {k: joined[k] for k in head}
    if isinstance(head, tuple | list):
        return type(head)(joined[str(i)] for i in range(len(head)))
    return joined[""]


def to_device(inputs: Inputs, device: torch.device | str) -> Inputs:
    """The inputs on ``device`` (unchanged objects when they are already there)."""
    return map_tensors(inputs, lambda t: t.to(device))


def describe(inputs: Any) -> str:
    """A short form for messages: ``tensor (64, 8) float32`` or ``{input_ids: (4, 16) int64}``."""
    import torch

    def one(t: Any) -> str:
        if isinstance(t, torch.Tensor):
            return f"{tuple(t.shape)} {str(t.dtype).removeprefix('torch.')}"
        return type(t).__name__

    if isinstance(inputs, torch.Tensor):
        return f"tensor {one(inputs)}"
    if isinstance(inputs, Mapping):
        return "{" + ", ".join(f"{k}: {one(v)}" for k, v in inputs.items()) + "}"
    if isinstance(inputs, tuple | list):
        return "(" + ", ".join(one(t) for t in inputs) + ")"
    return type(inputs).__name__


def _check_tensor(where: str, label: str, t: torch.Tensor) -> None:
    """One input tensor: it has a samples dimension, and its values are finite."""
    import torch

    if t.dim() == 0:
        raise DataError(
            f"{where}: {label} is a scalar, expected (samples, ...)",
            hint="the first dimension of every input counts the samples",
        )
    if not all_finite(t):
        n_bad = int((~torch.isfinite(t)).sum())
        raise DataError(
            f"{where}: {label} contains {n_bad} NaN or infinite values",
            hint="clean or impute the data before gating",
        )


def all_finite(t: torch.Tensor) -> bool:
    """Whether every element of ``t`` is finite (True for a tensor that is not floating).

    One reduction instead of an element-wise mask: a sum is finite only when every term
    is (a NaN anywhere makes it NaN; an infinity makes it infinite, or NaN beside the
    opposite infinity). A sum that is not finite may still come from finite terms that
    overflow, so only then is every element checked. Evaluation runs this on every
    batch's inputs and on every model's outputs: ``isfinite().all()`` cost 6-16x the sum.
    """
    if not t.is_floating_point():
        return True
    if math.isfinite(t.sum().item()):
        return True
    return bool(t.isfinite().all())


def check_inputs(inputs: Any, where: str) -> None:
    """Inputs are tensors in one of the three structures, with equal sample counts.

    Integer inputs (token ids, masks, indices) are fine: whether the model accepts a
    dtype is the model's business (the teacher is run on the first batch at load).
    Floating inputs must be finite: a NaN in the data makes every later number
    meaningless.
    """
    import torch

    if type(inputs) is torch.Tensor:  # the usual case, once per batch: the checks below, in short
        _check_tensor(where, "x", inputs)
        return
    if isinstance(inputs, Mapping):
        if not inputs:
            raise DataError(f"{where}: the inputs are an empty mapping")
        bad = [str(k) for k, v in inputs.items() if not isinstance(v, torch.Tensor)]
        if bad or not all(isinstance(k, str) for k in inputs):
            raise DataError(
                f"{where}: every input of a mapping must be a tensor under a string name; "
                f"{', '.join(bad) or 'a key'} is not",
                hint="yield {'input_ids': tensor, ...}: the names are forward's keyword arguments",
            )
    elif isinstance(inputs, tuple | list):
        if not inputs or not all(isinstance(t, torch.Tensor) for t in inputs):
            raise DataError(
                f"{where}: positional inputs must be a non-empty tuple of tensors, got {describe(inputs)}",
                hint="yield (x, y), ((x1, x2), y) or ({'name': x}, y) batches",
            )
    elif not isinstance(inputs, torch.Tensor):
        raise DataError(
            f"{where}: the inputs are a {type(inputs).__name__}, expected a tensor, a tuple of tensors or a mapping of tensors"
        )
    tensors = named_tensors(inputs)
    for name, t in tensors:
        _check_tensor(where, f"input {name!r}" if name else "x", t)
    counts = {name: len(t) for name, t in tensors}
    if len(set(counts.values())) > 1:
        shown = ", ".join(f"{k or 'x'}: {v}" for k, v in counts.items())
        raise DataError(
            f"{where}: the inputs disagree on the number of samples ({shown})",
            hint="every input tensor holds one row per sample",
        )


def iter_tensors(batch: Batch) -> Iterator[torch.Tensor]:
    """Every tensor of a batch, inputs then target."""
    inputs, target = batch
    for _, t in named_tensors(inputs):
        yield t
    if target is not None:
        yield target


# ---------------------------------------------------------------- device


def resolve_device(spec: str, *, path: str = "runtime.device") -> torch.device:
    """``cpu``, ``cuda`` or ``auto`` (cuda when present, else cpu) as a torch device.

    Asking for cuda on a machine without a usable GPU is a :class:`ConfigError` naming
    the field: a gate that silently fell back to the CPU would time the wrong thing.
    """
    import torch

    if spec == "cpu":
        return torch.device("cpu")
    available = torch.cuda.is_available()
    if spec == "auto":
        return torch.device("cuda" if available else "cpu")
    if spec == "cuda":
        if not available:
            why = (
                "this torch is a CPU-only build"
                if torch.version.cuda is None
                else "torch finds no CUDA device"
            )
            raise ConfigError(
                f"cuda was asked for, but {why}",
                path=path,
                hint="set runtime.device: auto (cuda when present, else cpu) or cpu, or run on a GPU runner with a CUDA build of torch",
            )
        return torch.device("cuda")
    raise ConfigError(f"must be one of cpu, cuda, auto, got {spec!r}", path=path)


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work (a timing that does not wait measures the launch only)."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
