"""``torch.export`` programs (``.pt2``) as modules the gate can run.

Read by :func:`ci_compress.packing.program.read_archive`, not ``torch.export.load``
(which falls back to unpickling with ``weights_only=False`` on a member it cannot read
safely): the program's JSON is checked like a packed file's graph, tensors come from
their raw bytes, pickled members are refused. Its module is a graph module fixed in
the mode it was exported in, wrapped in
:class:`~ci_compress.packing.program.ExportedProgram` (shared with the packed file's
programs). Imports torch at top: imported on use by :mod:`ci_compress.loading.models`.
"""

from __future__ import annotations

from pathlib import Path

from ci_compress.packing.program import ExportedProgram, read_archive

__all__ = ["ExportedProgram", "load_program"]


def load_program(path: Path) -> ExportedProgram:
    """Read a ``.pt2`` file written by ``torch.export.save``."""
    return read_archive(path)
