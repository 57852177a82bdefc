"""Unstructured magnitude pruning of Linear and Conv weights.

``amount`` zeroes exactly ``round(amount * n)`` weights with the smallest magnitude
(ties broken by position, so the result is deterministic), over all selected layers
together (``scope: global``) or in each layer alone (``scope: layer``). ``threshold``
instead zeroes every weight with ``|w| < threshold``. Biases are never pruned.

The zeros are written into the weights (no ``torch.nn.utils.prune`` masks left behind);
the packed shipped format stores them sparsely, so they cost almost nothing on disk.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from ci_compress.config import PassConfig
from ci_compress.passes.base import PassContext, PassRecord, select

if TYPE_CHECKING:
    import torch
    from torch import nn

TYPE = "prune"


class PruneConfig(PassConfig):
    """Magnitude pruning: zero the smallest weights."""

    type: Literal["prune"] = "prune"
    amount: float | None = Field(
        None, ge=0, lt=1, description="Fraction of weights to zero, in [0, 1)."
    )
    threshold: float | None = Field(
        None, ge=0, description="Zero every weight with |w| below this (instead of amount)."
    )
    scope: Literal["global", "layer"] = Field(
        "global", description="Rank weights across all selected layers together, or per layer."
    )

    @model_validator(mode="after")
    def _amount_or_threshold(self) -> PruneConfig:
        if (self.amount is None) == (self.threshold is None):
            raise ValueError("give exactly one of amount or threshold")
        return self


Config = PruneConfig


def _kinds() -> tuple[type, ...]:
    from torch import nn

    return (nn.Linear, nn.Conv1d, nn.Conv2d)


def apply(model: nn.Module, config: PruneConfig, ctx: PassContext) -> PassRecord:
    import torch

    where = f"passes[{ctx.index}]"
    chosen = select(model, config.include, config.exclude, _kinds(), path=where)
    record = PassRecord(
        name=TYPE,
        index=ctx.index,
        options=config.model_dump(mode="json"),
        modules=[n for n, _ in chosen],
    )
    weights = [m.weight for _, m in chosen]  # type: ignore[union-attr]
    if not weights:  # everything excluded: nothing to prune
        record.details = {"sparsity": 0.0, "pruned_weights": 0}
        return record
    with torch.no_grad():
        if config.threshold is not None:
            for w in weights:
                w.masked_fill_(w.abs() < config.threshold, 0.0)
        elif config.scope == "layer":
            for w in weights:
                _zero_smallest(w.view(-1), round(config.amount * w.numel()))  # type: ignore[operator]
        else:
            flat = torch.cat([w.detach().reshape(-1) for w in weights])
            k = round(config.amount * flat.numel())  # type: ignore[operator]
            mask = torch.ones_like(flat, dtype=torch.bool)
            if k:
                order = torch.argsort(flat.abs(), stable=True)
                mask[order[:k]] = False
            offset = 0
            for w in weights:
                n = w.numel()
                w.mul_(mask[offset : offset + n].view_as(w).to(w.dtype))
                offset += n
    total = sum(w.numel() for w in weights)
    zeros = sum(int((w == 0).sum()) for w in weights)
    record.details = {"sparsity": zeros / total if total else 0.0, "pruned_weights": total}
    return record


def _zero_smallest(flat: torch.Tensor, k: int) -> None:
    import torch

    if k:
        order = torch.argsort(flat.abs(), stable=True)
        flat[order[:k]] = 0.0
