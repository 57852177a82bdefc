"""The one way a file is written atomically or digested.

Every file the gate leaves behind (reports, the shipped student, downloads, tuned
configs) is written to a temporary file in the target folder and renamed over the
target, so a reader never sees half a file and a crash leaves no partial one. An
OSError on the way (a folder in the way, a read-only disk, a full disk) becomes a user
error naming the path (:func:`ci_compress.errors.os_error`: exit 3, or 4 for a full disk),
never "a bug in ci-compress".
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from ci_compress.errors import os_error

_CHUNK = 1 << 20


def atomic_write_with(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Create ``path`` atomically: ``write`` fills a temporary file, then it is renamed."""
    make_dir(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise os_error(e, path) from e
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        if e.errno is None:  # not the file system's: a network error while streaming (requests)
            raise
        raise os_error(e, path) from e
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def make_dir(path: Path) -> None:
    """``mkdir -p path``; a file in the way, or a folder that cannot be made, is a user
    error naming it (exit 3; 4 when the disk is full)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise os_error(e, path, doing="create the folder") from e


def remove_files(paths: list[Path]) -> None:
    """Remove each of ``paths`` that is a file (or a link); folders and missing paths are
    left alone, and a file that cannot be removed does not hide the error being handled."""
    for p in paths:
        try:
            if p.is_symlink() or p.is_file():
                p.unlink()
        except OSError:
            pass


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
