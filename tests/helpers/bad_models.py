"""Model factories that misbehave on purpose, for the bad-input catalogue."""

from __future__ import annotations

from torch import Tensor, nn


class NanOut(nn.Module):
    """Turns every logit into NaN (a numerically broken head)."""

    def forward(self, x: Tensor) -> Tensor:
        return x * float("nan")


def nan_output_model() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 10), NanOut())
