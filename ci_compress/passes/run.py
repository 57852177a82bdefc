"""Running one pass: the record's before/after counts and its time.

Kept apart from :mod:`ci_compress.passes.base` because counting decodes weights with
torch (:mod:`ci_compress.layers.inspect`), and the config loader must not import torch.
"""

from __future__ import annotations

import time

from torch import nn

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
    module: PassModule, model: nn.Module, config: PassConfig, ctx: PassContext
) -> tuple[nn.Module, PassRecord]:
    """Run one pass; returns the model to continue with (the same or its replacement)."""
    record = run_pass(module, model, config, ctx)
    new, record.replacement = record.replacement, None
    return (new if new is not None else model), record
