"""The one way a file is written atomically or digested.

Every file the gate leaves behind (reports, the shipped student, downloads, tuned
configs) is written to a temporary file in the target folder and renamed over the
target, so a reader never sees half a file and a crash leaves no partial one.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

_CHUNK = 1 << 20


def atomic_write_with(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Create ``path`` atomically: ``write`` fills a temporary file, then it is renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    def write(f: BinaryIO) -> None:
        f.write(data)

    atomic_write_with(path, write)


def atomic_write(path: Path, text: str) -> None:
    """Write UTF-8 text atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def text_sha256(text: str) -> str:
    """sha256 of a text's UTF-8 bytes (a config as read, for the manifest)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
