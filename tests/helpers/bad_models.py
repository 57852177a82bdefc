"""Model and data factories that misbehave on purpose, for the bad-input catalogue."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor, nn


class NanOut(nn.Module):
    """Turns every logit into NaN (a numerically broken head)."""

    def forward(self, x: Tensor) -> Tensor:
        return x * float("nan")


def nan_output_model() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 10), NanOut())


class Raises(nn.Module):
    """A model whose forward raises ``exc`` from its ``after``-th call on (0: always)."""

    def __init__(self, exc: BaseException, after: int = 0) -> None:
        super().__init__()
        self.head = nn.Linear(64, 10)
        self.exc = exc
        self.after = after
        self.calls = 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        if self.calls > self.after:
            raise self.exc
        return self.head(x)


def assert_model() -> nn.Module:
    return Raises(AssertionError("expected 3 channels"))


def zero_division_model() -> nn.Module:
    return Raises(ZeroDivisionError("division by zero"))


def key_error_model() -> nn.Module:
    return Raises(KeyError("pixel_values"))


def stop_iteration_model() -> nn.Module:
    return Raises(StopIteration())


class ModelBug(Exception):
    """An exception type of the user's own."""


def custom_error_model() -> nn.Module:
    return Raises(ModelBug("the weights were never initialised"))


def empty_message_model() -> nn.Module:
    return Raises(LookupError())


def late_assert_model() -> nn.Module:
    """Passes the load-time probe, then asserts during evaluation (after the student shipped)."""
    return Raises(AssertionError("batch statistics drifted"), after=2)


class StuckInTrainMode(nn.Module):
    """Dropout that stays on: ``train(False)`` (and so ``eval()``) is ignored."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(64, 10)
        self.drop = nn.Dropout(0.5)

    def train(self, mode: bool = True) -> StuckInTrainMode:
        return super().train(True)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.drop(x))


def train_mode_dropout_model() -> nn.Module:
    return StuckInTrainMode()


def _digits(split: str = "test") -> tuple[Tensor, Tensor]:
    from ci_compress.loading.data import digits_split

    x, y = digits_split(split)
    return torch.as_tensor(x), torch.as_tensor(y)


def fails_mid_stream(exc: str = "ValueError", at: int = 2) -> Iterator[tuple[Tensor, Tensor]]:
    """The digits holdout in batches of 64, until batch ``at`` raises ``exc``."""
    errors: dict[str, BaseException] = {
        "ValueError": ValueError("connection reset while reading shard 3"),
        "OSError": OSError("Input/output error"),
        "ConnectionError": ConnectionError("remote end closed the connection"),
        "AssertionError": AssertionError(),
        "KeyError": KeyError("label"),
    }
    x, y = _digits()
    for i, start in enumerate(range(0, len(x), 64)):
        if i == at:
            raise errors[exc]
        yield x[start : start + 64], y[start : start + 64]


def yields_strings() -> Iterator[object]:
    yield ("not", "tensors")


def sleeps_on_call(counter: str, call: int) -> Iterator[tuple[Tensor, Tensor]]:
    """The digits holdout; the ``call``-th time the factory is called (counted in the
    file ``counter``) it writes ``counter + ".sleeping"`` and sleeps, so a signal sent
    then lands at a known step of the run."""
    count = Path(counter)
    n = int(count.read_text()) + 1 if count.exists() else 1
    count.write_text(str(n))
    if n == call:
        Path(counter + ".sleeping").write_text(str(os.getpid()))
        time.sleep(120)
    x, y = _digits()
    for start in range(0, len(x), 64):
        yield x[start : start + 64], y[start : start + 64]
