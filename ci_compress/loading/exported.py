"""``torch.export`` programs (``.pt2``) as modules the gate can run.

``torch.export.load`` reads the program without unpickling code. Its ``.module()`` is a
graph module fixed in the mode it was exported in, wrapped in
:class:`~ci_compress.packing.program.ExportedProgram` (shared with the packed file's
programs). Imports torch at top: imported on use by :mod:`ci_compress.loading.models`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ci_compress.errors import ArtifactError
from ci_compress.packing.program import ExportedProgram

__all__ = ["ExportedProgram", "load_program"]


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
