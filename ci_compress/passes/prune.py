"""Unstructured magnitude pruning of Linear and Conv weights.

``amount`` zeroes exactly ``round(amount * n)`` weights with the smallest magnitude
(ties broken by position, so the result is deterministic), over all selected layers
together (``scope: global``) or in each layer alone (``scope: layer``). ``threshold``
instead zeroes every weight with ``|w| < threshold``. Biases are never pruned.

The zeros are written into the weights (no ``torch.nn.utils.prune`` masks left behind);
the packed shipped format stores them sparsely, so they cost almost nothing on disk.

``structured: true`` removes whole output neurons / conv channels instead (ranked by the
L1 or L2 norm of their weights, Li et al. 2017) and rewires the following layer and any
BatchNorm between, so the layers really shrink: fewer parameters and less compute. The
layer whose outputs are the model's outputs is never removed from (it is left out and
the record says so).

``steps: N`` with ``fine_tune_epochs: E`` prunes gradually (Zhu & Gupta 2017: sparsity
``s_t = amount * (1 - (1 - t/N)^3)``), fine-tuning ``E`` epochs on ``data.train`` after
each step with the pruned weights held at zero, to recover accuracy. Fine-tuning holds
every zero already in the model, in any layer (:func:`ci_compress.passes.training.fit`),
so a per-layer sequence of prune passes keeps each earlier pass's sparsity.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from ci_compress.errors import ConfigError
from ci_compress.passes.base import PassConfig, PassContext, PassRecord, select, set_submodule
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
        if self.steps > 1 and self.structured:
            raise ValueError("structured pruning runs in one step; use steps: 1")
        return self

    def needs_data(self) -> tuple[tuple[str, str], ...]:
        if self.fine_tune_epochs > 0:
            return (("data.train", "fine-tunes (fine_tune_epochs > 0)"),)
        return ()


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
    chosen = select(model, config.include, config.exclude, _kinds(), path=where)
    record = PassRecord(
        name=TYPE,
        index=ctx.index,
        options=config.model_dump(mode="json"),
        modules=[n for n, _ in chosen],
    )
    if config.structured:
        record.details = structured_prune_(model, chosen, config, where)
        record.modules = list(record.details["layers"])
        if x is not None and y is not None:
            record.details["fine_tune"] = fit(model, x, y, **_fit_args(config, ctx, ctx.seed))
        return record
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


# ---------------------------------------------------------------- structured


def _passthrough() -> tuple[type, ...]:
    """Modules that keep the channel axis as it is (elementwise or spatial only)."""
    from torch import nn

    return (
        nn.ReLU,
        nn.ReLU6,
        nn.GELU,
        nn.SiLU,
        nn.Tanh,
        nn.Sigmoid,
        nn.LeakyReLU,
        nn.Identity,
        nn.Dropout,
        nn.MaxPool1d,
        nn.MaxPool2d,
        nn.AvgPool1d,
        nn.AvgPool2d,
        nn.AdaptiveAvgPool1d,
        nn.AdaptiveAvgPool2d,
    )


def _consumer(model: nn.Module, name: str, where: str) -> tuple[str, list[str], bool] | None:
    """The layer that reads ``name``'s outputs, the BatchNorms between, and whether a
    Flatten is between. None when ``name`` is the model's output layer."""
    from torch import nn

    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    later = False
    seen = False
    for n, m in model.named_modules():
        if n == name:
            seen = True
        elif seen and isinstance(m, _kinds()) and not n.startswith(name + "."):
            later = True
            break
    if not isinstance(parent, nn.Sequential):
        if not later:
            return None
        raise ConfigError(
            f"cannot prune {name!r} structurally: it is not inside an nn.Sequential, so its consumer is unknown",
            path=f"{where}.include",
            hint=f"exclude {name!r} (exclude: [{name!r}]) or use unstructured pruning",
        )
    kids = list(parent.named_children())
    pos = [n for n, _ in kids].index(child)
    bns: list[str] = []
    flattened = False
    for n, m in kids[pos + 1 :]:
        full = f"{parent_name}.{n}" if parent_name else n
        if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d):
            if isinstance(m, nn.Conv1d | nn.Conv2d) and m.groups != 1:
                break
            return full, bns, flattened
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            bns.append(full)
        elif isinstance(m, nn.Flatten):
            flattened = True
        elif not isinstance(m, _passthrough()):
            raise ConfigError(
                f"cannot prune {name!r} structurally: its outputs go through {full!r} "
                f"({type(m).__name__}), which structured pruning cannot rewire",
                path=f"{where}.include",
                hint=f"exclude {name!r} (exclude: [{name!r}])",
            )
    if not later:
        return None
    raise ConfigError(
        f"cannot prune {name!r} structurally: no Linear/Conv reads its outputs inside its nn.Sequential",
        path=f"{where}.include",
        hint=f"exclude {name!r} (exclude: [{name!r}])",
    )


def _keep(weight: torch.Tensor, n_keep: int, norm: str) -> torch.Tensor:
    import torch

    w = weight.detach().reshape(weight.shape[0], -1)
    score = w.abs().sum(dim=1) if norm == "l1" else w.pow(2).sum(dim=1).sqrt()
    order = torch.argsort(score, descending=True, stable=True)[:n_keep]
    return torch.sort(order).values


def _shrink_out(layer: nn.Module, keep: torch.Tensor) -> nn.Module:
    """A copy of a Linear/Conv keeping only the output rows ``keep``."""
    import copy

    from torch import nn

    new = copy.deepcopy(layer)
    new.weight = nn.Parameter(_weight(layer).detach()[keep].clone())
    bias: torch.Tensor | None = layer.bias  # type: ignore[assignment]
    if bias is not None:
        new.bias = nn.Parameter(bias.detach()[keep].clone())
    if isinstance(new, nn.Linear):
        new.out_features = len(keep)
    else:
        new.out_channels = len(keep)  # type: ignore[assignment]
    return new


def _shrink_in(layer: nn.Module, keep: torch.Tensor, spatial: int) -> nn.Module:
    """A copy of a Linear/Conv reading only input channels ``keep`` (each ``spatial`` wide)."""
    import copy

    import torch
    from torch import nn

    new = copy.deepcopy(layer)
    cols = (keep[:, None] * spatial + torch.arange(spatial)[None, :]).reshape(-1)
    new.weight = nn.Parameter(_weight(layer).detach()[:, cols].clone())
    if isinstance(new, nn.Linear):
        new.in_features = len(cols)
    else:
        new.in_channels = len(keep)  # type: ignore[assignment]
    return new


def _shrink_bn(bn: nn.Module, keep: torch.Tensor) -> nn.Module:
    import copy

    from torch import nn

    new = copy.deepcopy(bn)
    for attr in ("weight", "bias"):
        t = getattr(bn, attr)
        if t is not None:
            setattr(new, attr, nn.Parameter(t.detach()[keep].clone()))
    for attr in ("running_mean", "running_var"):
        t = getattr(bn, attr)
        if t is not None:
            setattr(new, attr, t[keep].clone())
    new.num_features = len(keep)  # type: ignore[assignment]
    return new


def structured_prune_(
    model: nn.Module, chosen: list[tuple[str, nn.Module]], config: PruneConfig, where: str
) -> dict[str, Any]:
    """Remove ``amount`` of each chosen layer's output channels and rewire its consumer."""
    from torch import nn

    layers: dict[str, list[int]] = {}
    skipped: dict[str, str] = {}
    for name, _ in chosen:
        layer = model.get_submodule(name)  # fresh: an earlier step may have replaced it
        if isinstance(layer, nn.Conv1d | nn.Conv2d) and layer.groups != 1:
            skipped[name] = "grouped convolution"
            continue
        found = _consumer(model, name, where)
        if found is None:
            skipped[name] = "output layer: its outputs are the model's outputs"
            continue
        consumer_name, bns, flattened = found
        out = int(_weight(layer).shape[0])
        assert config.amount is not None  # the validator requires it for structured
        n_keep = max(1, out - round(config.amount * out))
        if n_keep == out:
            layers[name] = [out, out]
            continue
        consumer = model.get_submodule(consumer_name)
        spatial = 1
        if isinstance(consumer, nn.Linear) and (
            flattened or isinstance(layer, nn.Conv2d | nn.Conv1d)
        ):
            if consumer.in_features % out:
                raise ConfigError(
                    f"cannot prune {name!r} structurally: {consumer_name!r} reads "
                    f"{consumer.in_features} features, not a multiple of its {out} channels",
                    path=f"{where}.include",
                    hint=f"exclude {name!r}",
                )
            spatial = consumer.in_features // out
        keep = _keep(_weight(layer), n_keep, config.norm)
        set_submodule(model, name, _shrink_out(layer, keep))
        for bn_name in bns:
            set_submodule(model, bn_name, _shrink_bn(model.get_submodule(bn_name), keep))
        set_submodule(model, consumer_name, _shrink_in(consumer, keep, spatial))
        layers[name] = [out, n_keep]
    return {"structured": True, "norm": config.norm, "layers": layers, "skipped": skipped}
