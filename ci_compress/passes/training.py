"""The one training loop the passes share (fine-tuning, centroid tuning, distillation).

Deterministic: the data is read once into memory, shuffled each epoch by a generator
seeded from the pass's seed, and the optimizer is Adam with a fixed learning rate.
Bounded: ``epochs`` and an optional cap on optimizer steps. digits-sized data trains in
seconds on one core; larger data should set ``max_steps``.

Batches may be of any structure (:mod:`ci_compress.layers.batches`); the loss reads the
logits through the output adapter (``model.output``), and training runs on the
configured device (``runtime.device``), the model moved back to the CPU afterwards (the
packed file is written from there).

Zeros are held: every exact zero in a trained weight (a float parameter of two or more
dimensions, in any layer, not only the calling pass's) is recorded before training and
written back after every optimizer step. Without this a later pass's fine-tuning undid
earlier pruning outside its ``include`` (issue 18: a layer pruned to 90% zeros came back
at 16.5%). Biases and norm parameters (one dimension) are not held: a zero there is an
initial value, not pruning.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from ci_compress.errors import ConfigError
from ci_compress.layers.batches import (
    Inputs,
    batch_size,
    call_model,
    concat,
    map_tensors,
    select,
    to_device,
)
from ci_compress.layers.outputs import OutputSpec, select_output

if TYPE_CHECKING:
    import torch
    from torch import nn

Batches = Callable[[], Iterable[tuple[Any, "torch.Tensor | None"]]]
LossFn = Callable[["nn.Module", Any, "torch.Tensor", "torch.Tensor"], "torch.Tensor"]


def require(data: Batches | None, field: str, where: str, why: str) -> Batches:
    """The data source a pass needs, or a ConfigError naming the missing config field."""
    if data is None:
        raise missing(field, where, why)
    return data


def missing(field: str, where: str, why: str) -> ConfigError:
    """The error for a pass whose data section is absent (also raised by ``check``)."""
    return ConfigError(
        f"{where} {why}, but the config has no {field}",
        path=field,
        hint=f"add {field} (for example builtin: digits, split: train), or turn the option off",
    )


def materialize(
    data: Batches, field: str = "data.train", *, labels: bool = True
) -> tuple[Inputs, torch.Tensor]:
    """Every training batch in memory: inputs (floating ones as float32) and labels.

    ``labels=False`` (a loss that reads no labels): targets are not required, and the
    labels returned are zeros, one per sample.
    """
    import torch

    xs, ys = [], []
    for x, y in data():
        if not labels:
            xs.append(map_tensors(x, lambda t: t.float() if torch.is_floating_point(t) else t))
            ys.append(torch.zeros(batch_size(x), dtype=torch.long))
            continue
        if y is None:
            raise ConfigError(
                "training needs a target (labels), and the training data has none",
                path=field,
                hint=f"name the target with {field}.target, or yield (inputs, labels) from the factory",
            )
        xs.append(map_tensors(x, lambda t: t.float() if torch.is_floating_point(t) else t))
        ys.append(y.long())
    if not xs:
        raise ConfigError("the training data is empty", path=field)
    return concat(xs), torch.cat(ys)


def logits(model: nn.Module, x: Inputs, output: OutputSpec = None) -> torch.Tensor:
    """The model's output tensor for a batch, picked by ``model.output``."""
    return select_output(call_model(model, x), output, role="trained")


def cross_entropy(model: nn.Module, x: Any, y: torch.Tensor, idx: torch.Tensor) -> Any:
    import torch.nn.functional as F

    return F.cross_entropy(logits(model, x), y)


def zero_masks(params: Iterable[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(weight, keep mask) for each trained weight that holds exact zeros."""
    import torch

    out = []
    with torch.no_grad():
        for p in params:
            if p.dim() >= 2 and p.dtype.is_floating_point:
                keep = p != 0
                if not bool(keep.all()):
                    out.append((p, keep))
    return out


def fit(
    model: nn.Module,
    x: Inputs,
    y: torch.Tensor,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    max_steps: int | None = None,
    loss_fn: LossFn | None = None,
    after_step: Callable[[], None] | None = None,
    output: OutputSpec = None,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Train ``model`` in place; returns steps taken and the mean loss of the last epoch.

    ``loss_fn(model, x_batch, y_batch, idx)`` defaults to cross-entropy on the output
    ``output`` selects; ``device`` is where the steps run (the model ends on the CPU).
    Every zero already in a trained weight stays zero (see the module docstring);
    ``after_step`` runs after that, under ``torch.no_grad()``.
    """
    import torch
    import torch.nn.functional as F

    params = [p for p in model.parameters() if p.requires_grad]
    if not params or epochs == 0:
        return {"steps": 0, "last_epoch_loss": None}
    dev = torch.device(device)
    on_cpu = dev.type == "cpu"

    def default_loss(m: nn.Module, xb: Any, yb: torch.Tensor, idx: torch.Tensor) -> Any:
        return F.cross_entropy(logits(m, xb, output), yb)

    loss_of = loss_fn or default_loss
    if not on_cpu:
        model.to(dev)
    held = zero_masks(params)
    opt = torch.optim.Adam(params, lr=lr)
    g = torch.Generator().manual_seed(seed)
    steps = 0
    last = 0.0
    was_training = model.training
    model.train()
    n = _samples(x)
    try:
        for _ in range(epochs):
            order = torch.randperm(n, generator=g)
            total, count = 0.0, 0
            for i in range(0, n, batch_size):
                if max_steps is not None and steps >= max_steps:
                    break
                idx = order[i : i + batch_size]
                xb, yb = select(x, idx), y[idx]
                if not on_cpu:
                    xb, yb = to_device(xb, dev), yb.to(dev)
                opt.zero_grad()
                loss = loss_of(model, xb, yb, idx)
                loss.backward()
                opt.step()
                with torch.no_grad():
                    for p, keep in held:
                        p.mul_(keep)
                    if after_step is not None:
                        after_step()
                steps += 1
                total += float(loss.detach()) * len(idx)
                count += len(idx)
            if count:
                last = total / count
            if max_steps is not None and steps >= max_steps:
                break
    finally:
        model.train(was_training)
        if not on_cpu:
            model.to("cpu")
    model.eval()
    return {
        "steps": steps,
        "last_epoch_loss": round(last, 5),
        "zeros_held": sum(int(k.numel() - k.sum()) for _, k in held),
    }


def _samples(x: Inputs) -> int:
    return batch_size(x)
