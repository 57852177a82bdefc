"""Running one pass: the record's before/after counts and its time.

Kept apart from :mod:`ci_compress.passes.base` because counting decodes weights with
torch (:mod:`ci_compress.layers.inspect`), and the config loader must not import torch.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from ci_compress.errors import ConfigError
from ci_compress.layers.inspect import count_parameters
from ci_compress.passes.base import PassConfig, PassContext, PassModule, PassRecord


class Timer:
    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


def run_pass(
    module: PassModule, model: nn.Module, config: PassConfig, ctx: PassContext
) -> PassRecord:
    """Apply one pass and fill in the before/after counts and time of its record.

    When the pass returns a new model (``record.replacement``), the after-counts are the
    new model's; the caller continues with ``record.replacement`` (see :func:`apply_pass`).
    """
    before, nz_before = count_parameters(model)
    with Timer() as t:
        record = module.apply(model, config, ctx)
    record.params_before, record.nonzero_before = before, nz_before
    after = record.replacement if record.replacement is not None else model
    record.params_after, record.nonzero_after = count_parameters(after)
    record.seconds = t.seconds
    return record


def apply_pass(
    module: PassModule,
    model: nn.Module,
    config: PassConfig,
    ctx: PassContext,
    *,
    allow_noop: bool = False,
) -> tuple[nn.Module, PassRecord]:
    """Run one pass; returns the model to continue with (the same or its replacement).

    A pass that leaves the model as it was (the same module types and every tensor
    equal) is a :class:`ConfigError` naming ``passes[i]``: a gate must not pass a
    "compressed" student that is the teacher. ``allow_noop`` is for ``explain``, which
    restricts passes to one layer and may leave a pass nothing to do.
    """
    before = None if allow_noop else _snapshot(model)
    record = run_pass(module, model, config, ctx)
    new, record.replacement = record.replacement, None
    out = new if new is not None else model
    if before is not None and _snapshot_equal(before, out):
        raise ConfigError(
            f"{config.type} changed nothing: every module and tensor of the model is as it "
            "was before it",
            path=f"passes[{ctx.index}]",
            hint=_noop_hint(config, record),
        )
    return out, record


Snapshot = tuple[list[tuple[str, type]], dict[str, Any]]


def _snapshot(model: nn.Module) -> Snapshot:
    """The module tree (names, classes) and a copy of every state_dict entry."""
    tree = [(n, type(m)) for n, m in model.named_modules()]
    state = {
        k: v.detach().clone() if isinstance(v, torch.Tensor) else v
        for k, v in model.state_dict().items()
    }
    return tree, state


def _snapshot_equal(before: Snapshot, model: nn.Module) -> bool:
    tree, state = before
    if tree != [(n, type(m)) for n, m in model.named_modules()]:
        return False
    now = model.state_dict()
    if list(now) != list(state):
        return False
    for k, old in state.items():
        new = now[k]
        try:
            if isinstance(old, torch.Tensor) and isinstance(new, torch.Tensor):
                same = old.dtype == new.dtype and old.shape == new.shape and torch.equal(old, new)
            else:
                same = bool(old == new)
        except Exception:  # an entry we cannot compare counts as changed
            return False
        if not same:
            return False
    return True


def _noop_hint(config: PassConfig, record: PassRecord) -> str:
    options = config.model_dump()
    if not record.modules:
        return (
            f"its include {list(config.include)} (exclude {list(config.exclude)}) selects "
            "no module it can change: name the layers to compress, or remove the pass"
        )
    knobs = [
        k
        for k in ("amount", "threshold", "bits", "rank", "energy", "rank_ratio")
        if options.get(k) is not None
    ]
    return (
        f"it selected {', '.join(record.modules[:5])}"
        + (" and more" if len(record.modules) > 5 else "")
        + " but left them as they were"
        + (f": make {', '.join(knobs)} stronger" if knobs else "")
        + ", or remove the pass"
    )
