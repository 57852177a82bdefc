"""Unstructured magnitude pruning of Linear and Conv weights.

``amount`` zeroes exactly ``round(amount * n)`` weights with the smallest magnitude
(ties broken by position, so the result is deterministic), over all selected layers
together (``scope: global``) or in each layer alone (``scope: layer``). ``threshold``
instead zeroes every weight with ``|w| < threshold``. Biases are never pruned.

The zeros are written into the weights (no ``torch.nn.utils.prune`` masks left behind);
the packed shipped format stores them sparsely, so they cost almost nothing on disk.

``structured: true`` removes whole channels, neurons and attention heads instead, on any
architecture: the coupled widths (skip connections, BatchNorm, q/k/v heads, FFN neurons)
come from the model's own dependency graph traced on an example batch
(:mod:`ci_compress.passes.structured`, DepGraph through ``torch-pruning``), so the layers
really shrink: fewer parameters and less compute. Channels are ranked by the L1/L2 norm
of their group's weights (``norm``, Li et al. 2017) or by first-order Taylor importance
on ``data.train`` (``importance: taylor``). A group whose width is the model's output
is never pruned (the record says so); the output shapes are checked on the example batch.

``steps: N`` with ``fine_tune_epochs: E`` prunes gradually (Zhu & Gupta 2017: sparsity
``s_t = amount * (1 - (1 - t/N)^3)``), fine-tuning ``E`` epochs on ``data.train`` after
each step with the pruned weights held at zero, to recover accuracy. Structured pruning
is gradual the same way: the fraction of each group's channels removed follows the same
schedule on one traced graph, re-ranked on the fine-tuned weights at each step. Fine-tuning holds
every zero already in the model, in any layer (:func:`ci_compress.passes.training.fit`),
so a per-layer sequence of prune passes keeps each earlier pass's sparsity.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from ci_compress.passes.base import PassConfig, PassContext, PassRecord, select
from ci_compress.passes.structured import EXAMPLE_FIELDS, example_batch, prune_structured
from ci_compress.passes.training import fit, materialize, require

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
    structured: bool = Field(
        False,
        description="Remove whole output neurons / conv channels (amount = fraction per layer) and shrink the next layer.",
    )
    norm: Literal["l1", "l2"] = Field(
        "l1", description="Structured: rank neurons/channels by the L1 or L2 norm of their weights."
    )
    importance: Literal["magnitude", "taylor"] = Field(
        "magnitude",
        description="Structured: rank channels by weight magnitude (norm) or first-order Taylor |w * dL/dw| on data.train.",
    )
    steps: int = Field(
        1, ge=1, le=100, description="Gradual pruning steps (Zhu & Gupta cubic schedule)."
    )
    fine_tune_epochs: int = Field(
        0,
        ge=0,
        le=1000,
        description="Epochs of fine-tuning on data.train after each pruning step (0: none).",
    )
    lr: float = Field(1e-3, gt=0, le=1, description="Fine-tuning learning rate (Adam).")
    batch_size: int = Field(64, ge=1, le=65536, description="Fine-tuning batch size.")
    max_steps: int | None = Field(
        None, ge=1, description="Cap on fine-tuning optimizer steps in total."
    )

    @model_validator(mode="after")
    def _amount_or_threshold(self) -> PruneConfig:
        if (self.amount is None) == (self.threshold is None):
            raise ValueError("give exactly one of amount or threshold")
        if self.structured and self.amount is None:
            raise ValueError("structured pruning needs amount (the fraction of channels to remove)")
        if self.steps > 1 and self.amount is None:
            raise ValueError("gradual pruning (steps > 1) needs amount")
        if self.importance == "taylor" and not self.structured:
            raise ValueError(
                "importance: taylor ranks channels for structured pruning; set structured: true"
            )
        return self

    def needs_data(self) -> tuple[tuple[str, str], ...]:
        needs: list[tuple[str, str]] = []
        if self.fine_tune_epochs > 0:
            needs.append(("data.train", "fine-tunes (fine_tune_epochs > 0)"))
        if self.importance == "taylor":
            needs.append(("data.train", "ranks channels by importance: taylor"))
        if self.structured and not needs:
            needs.append((EXAMPLE_FIELDS, "traces the model's graph on an example batch"))
        return tuple(needs)


Config = PruneConfig


def _kinds() -> tuple[type[nn.Module], ...]:
    from torch import nn

    return (nn.Linear, nn.Conv1d, nn.Conv2d)


def apply(model: nn.Module, config: PruneConfig, ctx: PassContext) -> PassRecord:
    """Prune the selected layers (unstructured, structured or gradual) and fine-tune."""
    where = f"passes[{ctx.index}]"
    x = y = None
    if config.fine_tune_epochs > 0:
        data = require(ctx.train_data, "data.train", where, config.needs_data()[0][1])
        x, y = materialize(data)
    record = PassRecord(name=TYPE, index=ctx.index, options=config.model_dump(mode="json"))
    if config.structured:
        assert config.amount is not None  # the validator requires it for structured
        if config.importance == "taylor":
            require(ctx.train_data, "data.train", where, "ranks channels by importance: taylor")
        fine_tune = None
        if x is not None and y is not None and config.steps > 1:

            def fine_tune(t: int) -> dict[str, Any]:
                assert x is not None and y is not None
                return fit(model, x, y, **_fit_args(config, ctx, ctx.seed + t))

        record.details = prune_structured(
            model,
            amount=config.amount,
            norm=config.norm,
            importance=config.importance,
            include=config.include,
            exclude=config.exclude,
            example=example_batch(ctx.calibration_data, ctx.train_data, where),
            where=where,
            train=ctx.train_data,
            output=ctx.output,
            steps=config.steps,
            between=fine_tune,
        )
        record.modules = list(record.details["layers"])
        if x is not None and y is not None and config.steps == 1:
            record.details["fine_tune"] = fit(model, x, y, **_fit_args(config, ctx, ctx.seed))
        return record
    chosen = select(model, config.include, config.exclude, _kinds(), path=where)
    record.modules = [n for n, _ in chosen]
    if config.steps == 1 and x is None:
        _prune_step(chosen, config, config.amount)
        record.details = _sparsity(chosen)
        return record
    # gradual: prune to s_t, fine-tune (fit holds every zero in the model), repeat
    schedule = [
        config.amount * (1 - (1 - t / config.steps) ** 3)  # type: ignore[operator]
        for t in range(1, config.steps + 1)
    ]
    if config.threshold is not None:
        schedule = [0.0]
    history = []
    for t, target in enumerate(schedule):
        _prune_step(chosen, config, target if config.threshold is None else None)
        step: dict[str, Any] = {"sparsity": round(_sparsity(chosen)["sparsity"], 6)}
        if x is not None and y is not None:
            step |= fit(model, x, y, **_fit_args(config, ctx, ctx.seed + t))
        history.append(step)
    record.details = _sparsity(chosen) | {"schedule": history}
    return record


def _fit_args(config: PruneConfig, ctx: PassContext, seed: int) -> dict[str, Any]:
    return {
        "epochs": config.fine_tune_epochs,
        "lr": config.lr,
        "batch_size": config.batch_size,
        "seed": seed,
        "max_steps": config.max_steps,
        **ctx.fit_options(),
    }


def _weight(m: nn.Module) -> torch.Tensor:
    """The ``weight`` of a Linear/Conv, typed (``nn.Module.__getattr__`` is not)."""
    w: torch.Tensor = m.weight  # type: ignore[assignment]
    return w


def _sparsity(chosen: list[tuple[str, nn.Module]]) -> dict[str, Any]:
    weights = [_weight(m) for _, m in chosen]
    total = sum(w.numel() for w in weights)
    zeros = sum(int((w == 0).sum()) for w in weights)
    return {"sparsity": zeros / total if total else 0.0, "pruned_weights": total}


def _prune_step(
    chosen: list[tuple[str, nn.Module]], config: PruneConfig, amount: float | None
) -> None:
    import torch

    weights = [_weight(m) for _, m in chosen]
    if not weights:  # everything excluded: nothing to prune
        return
    with torch.no_grad():
        if amount is None:
            for w in weights:
                w.masked_fill_(w.abs() < config.threshold, 0.0)  # type: ignore[operator]
        elif config.scope == "layer":
            for w in weights:
                _zero_smallest(w.view(-1), round(amount * w.numel()))
        else:
            flat = torch.cat([w.detach().reshape(-1) for w in weights])
            k = round(amount * flat.numel())
            mask = torch.ones_like(flat, dtype=torch.bool)
            if k:
                order = torch.argsort(flat.abs(), stable=True)
                mask[order[:k]] = False
            offset = 0
            for w in weights:
                n = w.numel()
                w.mul_(mask[offset : offset + n].view_as(w).to(w.dtype))
                offset += n


def _zero_smallest(flat: torch.Tensor, k: int) -> None:
    import torch

    if k:
        order = torch.argsort(flat.abs(), stable=True)
        flat[order[:k]] = 0.0
