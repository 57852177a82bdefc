"""Library versions: the one reading, for every record that names them.

Three records carry versions, each with its own, fixed set of names: the packed
file's manifest (:func:`ci_compress.packing.file.pack`: ``ci_compress``, ``torch``,
``numpy``, ``safetensors``, ``zstandard``), the report's ``environment`` and the
reproducibility manifest (distribution names, ``python``). Each passes its names to
:func:`versions`; the names, and so the bytes of a ``.ccz`` and of report.json, are
theirs, the way a version is read is this module's.

Versions come from :mod:`importlib.metadata`, so reading them imports nothing heavy;
ci-compress's own is the running code's ``__version__``, and ``python`` the
interpreter's.
"""

from __future__ import annotations

import functools
import platform
import sys
from collections.abc import Iterable
from importlib import metadata

from ci_compress import __version__

OWN = frozenset({"ci_compress", "ci-compress"})


def versions(names: Iterable[str]) -> dict[str, str | None]:
    """``{name: version}`` in the order given; ``None`` for what is not installed.

    A name is a distribution (``scikit-learn``) or its import name (``ci_compress``);
    ``python`` is the interpreter.
    """
    return {name: version(name) for name in names}


@functools.cache
def version(name: str) -> str | None:
    if name in OWN:
        return __version__
    if name == "python":
        return platform.python_version()
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        module = sys.modules.get(name.replace("-", "_"))
        found = getattr(module, "__version__", None)
        return str(found) if found is not None else None
