"""The one training loop the passes share (fine-tuning, centroid tuning, distillation).

Deterministic: the data is read once into memory, shuffled each epoch by a generator
seeded from the pass's seed, and the optimizer is Adam with a fixed learning rate.
Bounded: ``epochs`` and an optional cap on optimizer steps. digits-sized data trains in
seconds on one core; larger data should set ``max_steps``.

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

if TYPE_CHECKING:
    import torch
    from torch import nn

Batches = Callable[[], Iterable[tuple["torch.Tensor", "torch.Tensor"]]]
LossFn = Callable[["nn.Module", "torch.Tensor", "torch.Tensor", "torch.Tensor"], "torch.Tensor"]


def require(data: Batches | None, field: str, where: str, why: str) -> Batches:
    """The data source a pass needs, or a ConfigError naming the missing config field."""
    if data is None:
        raise ConfigError(
            f"{where} {why}, but the config has no {field}",
            path=field,
            hint=f"add {field} (for example builtin: digits, split: train), or turn the option off",
        )
    return data


def materialize(data: Batches) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    xs, ys = [], []
    for x, y in data():
        xs.append(x.float())
        ys.append(y.long())
    if not xs:
        raise ConfigError("the training data is empty", path="data.train")
    return torch.cat(xs), torch.cat(ys)


def cross_entropy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> Any:
    import torch.nn.functional as F

    return F.cross_entropy(model(x), y)


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
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    max_steps: int | None = None,
    loss_fn: LossFn = cross_entropy,
    after_step: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Train ``model`` in place; returns steps taken and the mean loss of the last epoch.

    Every zero already in a trained weight stays zero (see the module docstring);
    ``after_step`` runs after that, under ``torch.no_grad()``.
    """
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    if not params or epochs == 0:
        return {"steps": 0, "last_epoch_loss": None}
    held = zero_masks(params)
    opt = torch.optim.Adam(params, lr=lr)
    g = torch.Generator().manual_seed(seed)
    steps = 0
    last = 0.0
    was_training = model.training
    model.train()
    try:
        for _ in range(epochs):
            order = torch.randperm(len(y), generator=g)
            total, count = 0.0, 0
            for i in range(0, len(y), batch_size):
                if max_steps is not None and steps >= max_steps:
                    break
                idx = order[i : i + batch_size]
                opt.zero_grad()
                loss = loss_fn(model, x[idx], y[idx], idx)
                loss.backward()  # type: ignore[no-untyped-call]
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
    model.eval()
    return {
        "steps": steps,
        "last_epoch_loss": round(last, 5),
        "zeros_held": sum(int(k.numel() - k.sum()) for _, k in held),
    }
