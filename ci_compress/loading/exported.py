"""``torch.export`` programs (``.pt2``) as modules the gate can run.

``torch.export.load`` reads the program without unpickling code. Its ``.module()`` is a
graph module fixed in the mode it was exported in: torch refuses ``.eval()`` and
``.train()`` on it. The gate calls ``.eval()`` on every model it measures, so the graph is
wrapped in :class:`ExportedProgram`, whose ``train(mode)`` records the flag and leaves
the graph alone. Imports torch at top: imported on use by
:mod:`ci_compress.loading.models`.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ci_compress.errors import ArtifactError


class ExportedProgram(nn.Module):
    """A loaded ``torch.export`` program; ``program`` is its graph module."""

    def __init__(self, program: nn.Module) -> None:
        super().__init__()
        self.program = program

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.program(*args, **kwargs)

    def train(self, mode: bool = True) -> ExportedProgram:
        # the graph runs as exported (eval behaviour of dropout, batch norm is baked in)
        self.training = mode
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> ExportedProgram:
        # torch's own pytree specs warn (FutureWarning) when a graph is deep-copied;
        # the gate copies the teacher once, and that line would only be noise.
        clone = ExportedProgram.__new__(ExportedProgram)
        memo[id(self)] = clone
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            for key, value in self.__dict__.items():
                clone.__dict__[key] = copy.deepcopy(value, memo)
        return clone


def load_program(path: Path) -> ExportedProgram:
    """Read a ``.pt2`` file written by ``torch.export.save``."""
    try:
        program = torch.export.load(str(path))
    except Exception as e:  # torch raises many types for a bad archive
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise ArtifactError(
            f"{path} is not a torch.export program ci-compress can read ({first})",
            hint="write it with torch.export.save(torch.export.export(model, example_inputs), path)",
        ) from None
    return ExportedProgram(program.module())
