"""Holdouts larger than memory: a folder of ``.npy`` arrays, or of shard folders, read a
few batches at a time.

``data.holdout.path`` may name a folder instead of a file. The folder holds one ``.npy``
file per named array (``x.npy`` and ``y.npy`` by default; ``inputs`` and ``target`` name
others, as for ``.npz``), or sub-folders (shards, read in name order) that each hold
the same arrays. ``np.save`` writes them; a dataset too large for one machine's memory is
written shard by shard.

Nothing is read whole. Each array's header is parsed (:mod:`numpy.lib.format`, no
pickles: an object dtype is refused) and checked against the file's size before any
data is read, so a header cannot ask for more than the file holds. A shard's files are
opened once; batches are then read a piece at a time (whole batches, about
:data:`READ_BYTES` per piece, at least one batch) with one ``seek`` + ``readinto`` per
array into a fresh buffer, and handed out as views of it. Reading this way, not through
``mmap``, keeps the pages out of the process's resident set: peak memory is a piece or two,
whatever the holdout's size (``benchmarks/holdout_scale.py`` measures it). The
samples, and so the holdout's digest, are the same as those of an ``.npz`` holding the
same arrays.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ci_compress.errors import DataError

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class NpyArray:
    """One ``.npy`` file: where its data starts, its shape and dtype."""

    path: Path
    offset: int
    shape: tuple[int, ...]
    dtype: np.dtype[Any]

    @property
    def samples(self) -> int:
        return self.shape[0]

    @property
    def row_bytes(self) -> int:
        """Bytes of one sample."""
        return math.prod(self.shape[1:]) * self.dtype.itemsize

    def read(self, start: int, stop: int, f: io.RawIOBase | None = None) -> np.ndarray:
        """Samples ``start:stop`` (one read into a buffer of exactly their size), from
        ``f`` (this file, opened unbuffered by the caller) or a file opened for it."""
        import numpy as np

        if f is None:
            with self.path.open("rb", 0) as fh:
                return self.read(start, stop, fh)
        row = self.row_bytes
        out = np.empty((stop - start, *self.shape[1:]), dtype=self.dtype)
        f.seek(self.offset + start * row)
        want = (stop - start) * row
        got = f.readinto(out.data) or 0
        if 0 < got < want:  # an unbuffered read may return less than asked
            view = out.data.cast("B")
            while got < want and (part := f.readinto(view[got:])):
                got += part
        if got != want:  # the file shrank after it was opened
            raise DataError(f"{self.path}: truncated while reading samples {start}:{stop}")
        return out


READ_BYTES = 1 << 18
"""A folder holdout is read in pieces of whole batches of about this size (one batch
when a batch is larger): a few system calls per MiB; memory holds one or two pieces."""


def open_npy(path: Path, field: str) -> NpyArray:
    """Parse and check one ``.npy`` header; no data is read."""
    import numpy as np
    from numpy.lib import format as npformat

    where = f"{field}.path: {path.parent.name}/{path.name}"
    try:
        with path.open("rb") as f:
            version = npformat.read_magic(f)
            if version not in ((1, 0), (2, 0), (3, 0)):
                raise ValueError(f"unsupported .npy format version {version}")
            header = _plain_header(f, version)
            if header is not None:
                shape, fortran, dtype = header
            elif version == (1, 0):
                shape, fortran, dtype = npformat.read_array_header_1_0(f)
            else:
                shape, fortran, dtype = npformat.read_array_header_2_0(f)
            offset = f.tell()
            actual = os.fstat(f.fileno()).st_size
    except (ValueError, OSError, EOFError) as e:
        raise DataError(f"{where} is not a readable .npy file ({e})") from None
    if dtype.hasobject:
        raise DataError(
            f"{where} holds Python objects (dtype {dtype}), which would need unpickling",
            hint="save numeric arrays (np.save of a float or integer array)",
        )
    if fortran and len(shape) > 1:
        raise DataError(
            f"{where} is stored in Fortran order; batches are read as rows",
            hint="save np.ascontiguousarray(array) instead",
        )
    if not shape:
        raise DataError(f"{where} is a scalar; an array of samples (first axis) is needed")
    expected = offset + math.prod(shape) * np.dtype(dtype).itemsize
    if actual != expected:
        raise DataError(
            f"{where} declares shape {tuple(shape)} of {dtype} ({expected:,} bytes with its header) "
            f"but the file has {actual:,} bytes",
            hint="the file is truncated or not what its header says; write it again with np.save",
        )
    return NpyArray(path=path, offset=offset, shape=tuple(shape), dtype=np.dtype(dtype))


# The header np.save writes for a plain array, exactly: a simple dtype string, the
# order, the shape (``()``, ``(n,)`` or ``(n, m, ...)``), then spaces and a newline.
_DIM = rb"(?:0|[1-9][0-9]*)"  # a Python int literal (no leading zeros)
_PLAIN_HEADER = re.compile(
    rb"\{'descr': '([<>|=]?[A-Za-z][0-9]*)', 'fortran_order': (False|True), "
    rb"'shape': \((|" + _DIM + rb",|" + _DIM + rb"(?:, " + _DIM + rb")+)\), \} *\n"
)
_MAX_HEADER = 10_000  # numpy's limit (``max_header_size``); longer headers go to numpy


def _plain_header(
    f: io.BufferedReader, version: tuple[int, int]
) -> tuple[tuple[int, ...], bool, np.dtype[Any]] | None:
    """The header of ``f`` (just past the magic string) when it is one np.save writes
    for a plain array, ``f`` then at the data; else None with ``f`` where it was, for
    numpy's own parser (:func:`numpy.lib.format.read_array_header_1_0`), which reads
    any header and words every error.

    numpy's parser runs ``ast.literal_eval`` on the header: about 0.2 ms a file, a
    quarter of ``np.load`` of a 5,400-sample shard of 64 floats, paid for every file of
    every shard each time a folder is opened (``benchmarks/holdout_scale.py``). The
    pattern accepts only headers ``literal_eval`` reads to the same (shape, order,
    dtype); a dtype string numpy refuses goes to numpy's parser, which words the error.
    """
    import numpy as np

    start = f.tell()
    size = 2 if version == (1, 0) else 4
    raw = f.read(size)
    if len(raw) == size and (length := int.from_bytes(raw, "little")) <= _MAX_HEADER:
        text = f.read(length)
        m = _PLAIN_HEADER.fullmatch(text) if len(text) == length else None
        if m is not None:
            descr, fortran, dims = m.groups()
            try:
                dtype = np.dtype(descr.decode("ascii"))
            except (TypeError, ValueError, OverflowError):
                dtype = None
            if dtype is not None:
                shape = tuple(int(d) for d in dims.split(b",") if d)
                return shape, fortran == b"True", dtype
    f.seek(start)
    return None


@dataclass(frozen=True)
class NpyShards:
    """The shards of a folder holdout, each a mapping ``array name -> NpyArray``."""

    folder: Path
    shards: tuple[Mapping[str, NpyArray], ...]

    @property
    def samples(self) -> int:
        return sum(next(iter(s.values())).samples for s in self.shards)

    def batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        """``{name: samples}`` batches of at most ``batch_size``, shard after shard.

        A shard's files are opened once (unbuffered: each piece is one ``readinto``
        straight into its array) and closed when the shard is done, or when the caller
        stops early (the generator's ``close``)."""
        for shard in self.shards:
            n = next(iter(shard.values())).samples
            row = sum(a.row_bytes for a in shard.values())
            # a read covers whole batches, up to READ_BYTES of them (at least one batch)
            step = max(1, READ_BYTES // max(1, row * batch_size)) * batch_size
            with contextlib.ExitStack() as stack:
                files = {
                    name: stack.enter_context(a.path.open("rb", 0)) for name, a in shard.items()
                }
                for i in range(0, n, step):
                    j = min(i + step, n)
                    read = {name: a.read(i, j, files[name]) for name, a in shard.items()}
                    for k in range(0, j - i, batch_size):
                        yield {name: v[k : k + batch_size] for name, v in read.items()}
                    del read  # before the next piece: the caller may still hold its last batch


def open_folder(folder: Path, names: Sequence[str], field: str) -> NpyShards:
    """A folder holdout: ``<name>.npy`` for each of ``names`` in the folder itself, or in
    each of its sub-folders (shards, in name order). Every header is checked now."""
    direct = [folder / f"{n}.npy" for n in names]
    if any(p.exists() for p in direct):
        dirs = [folder]
    else:
        dirs = sorted(p for p in folder.iterdir() if p.is_dir())
        if not dirs:
            present = sorted(p.name for p in folder.iterdir())[:8]
            raise DataError(
                f"{field}.path: the folder {folder.name} holds no {names[0]}.npy and no shard folders "
                f"(it holds {present})",
                hint=f"save one .npy per array ({', '.join(n + '.npy' for n in names)}), in the folder or in shard sub-folders",
            )
    shards: list[dict[str, NpyArray]] = []
    first: dict[str, tuple[tuple[int, ...], np.dtype[Any]]] | None = None
    for d in dirs:
        shard: dict[str, NpyArray] = {}
        for n in names:
            p = d / f"{n}.npy"
            if not p.is_file():
                held = sorted(q.stem for q in d.glob("*.npy"))
                raise DataError(
                    f"{field}.path: {_rel(p, folder)} is missing (shard {d.name} holds {held})",
                    hint=f"every shard holds the same arrays: {', '.join(n + '.npy' for n in names)}",
                )
            shard[n] = open_npy(p, field)
        counts = {n: a.samples for n, a in shard.items()}
        if len(set(counts.values())) > 1:
            raise DataError(
                f"{field}.path: the arrays of {_rel(d, folder) or folder.name} disagree on the number of samples ({counts})"
            )
        # compared as dtypes, named as strings (``str(dtype)`` is Python code in
        # numpy: 30 us an array, on every shard each time the folder is opened)
        layout = {n: (a.shape[1:], a.dtype) for n, a in shard.items()}
        if first is None:
            first = layout
        elif layout != first:
            raise DataError(
                f"{field}.path: shard {d.name} stores {_named(layout)}, the first shard {_named(first)}",
                hint="every shard holds arrays of the same per-sample shape and dtype",
            )
        if next(iter(counts.values())):
            shards.append(shard)
    if not shards:
        raise DataError(
            f"{field}: {folder.name} is empty (0 samples)",
            hint="give a holdout with at least one sample",
        )
    return NpyShards(folder=folder, shards=tuple(shards))


def _named(
    layout: Mapping[str, tuple[tuple[int, ...], np.dtype[Any]]],
) -> dict[str, tuple[tuple[int, ...], str]]:
    return {n: (shape, str(dtype)) for n, (shape, dtype) in layout.items()}


def _rel(p: Path, folder: Path) -> str:
    return str(p.relative_to(folder)) if p != folder else ""
