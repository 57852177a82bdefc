"""Holdout (and training, calibration) data: files, factories and the built-in digits set.

A batch is ``(inputs, target)`` (:mod:`ci_compress.layers.batches`): inputs a tensor,
positional tensors or keyword tensors, target a tensor or None. Every batch is checked
as it is read: inputs well-formed with one sample count, floating inputs finite, the
target as long as the inputs and what the task can score (the task's
``check_target``). Integer inputs (token ids, masks) are fine; whether the model takes
them is checked by running the teacher on the first batch at load. An empty set is an
error, not an accuracy of 0/0.

Files (``.npz``, ``.pt``, ``.safetensors``) and folders of ``.npy`` arrays or shards
(:mod:`ci_compress.loading.npy`, read a few batches at a time for holdouts larger than
memory) may hold several named arrays; the config
names the inputs (``data.holdout.inputs``: one name, a list for positional arguments, a
mapping ``argument: array`` for keyword arguments) and the target
(``data.holdout.target``, null for none); the defaults are ``x`` and ``y``.

The digest (sha256 over the samples' bytes, in order, independent of batching)
identifies exactly the data that was evaluated; the pipeline computes it during the
evaluation pass, so a streaming factory is read once.
"""

from __future__ import annotations

import functools
import hashlib
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ci_compress.errors import CICompressError, DataError
from ci_compress.layers.batches import (
    Batch,
    Inputs,
    batch_size,
    check_inputs,
    concat,
    named_tensors,
    take,
)
from ci_compress.loading.npy import open_folder
from ci_compress.refs import import_factory

if TYPE_CHECKING:
    import torch

    from ci_compress.config import DataSource

TargetCheck = Callable[["torch.Tensor | None", str], None]
"""A task's check of one batch's target (``where`` names the data set and batch)."""

DEFAULT_INPUTS = "x"
DEFAULT_TARGET = "y"


@dataclass
class Dataset:
    """A re-iterable source of checked ``(inputs, target)`` batches."""

    name: str
    field: str
    _tensors: tuple[Any, Any] | None = None  # (inputs, target) held in memory
    _factory: Callable[[], Iterable[Any]] | None = None
    limit: int | None = None
    check_target: TargetCheck | None = None
    _first: Batch | None = None  # a factory's first batch, read once at load
    # A folder of .npy arrays (loading.npy): batches read at the size asked for
    _reader: Callable[[int], Iterable[Any]] | None = None
    _samples: int | None = None  # known without reading (a folder's headers)

    def batches(self, batch_size_: int) -> Iterator[Batch]:
        if self._tensors is not None:
            inputs, target = self._tensors
            total = batch_size(inputs)
            n = total if self.limit is None else min(total, self.limit)
            for i in range(0, n, batch_size_):
                j = min(i + batch_size_, n)
                yield take(inputs, i, j), (None if target is None else target[i:j])
            return
        try:
            if self._reader is not None:
                source = iter(self._reader(batch_size_))
            else:
                assert self._factory is not None
                source = iter(self._factory())
        except DataError:
            raise
        except Exception as e:
            raise DataError(f"{self.field}: the factory raised {type(e).__name__}: {e}") from None
        seen = 0
        for i, item in enumerate(self._read(source)):
            if self._reader is not None:  # a folder's batches: already (inputs, target) tensors
                inputs, target = item
                n = batch_size(inputs)
                if self.limit is not None and seen + n > self.limit:
                    n = self.limit - seen
                    inputs = take(inputs, 0, n)
                    target = None if target is None else target[:n]
                self._check(inputs, target, f"{self.field} batch {i}")
                yield inputs, target
                seen += n
                if self.limit is not None and seen >= self.limit:
                    return
                continue
            if not (isinstance(item, tuple | list) and len(item) == 2):
                raise DataError(
                    f"{self.field}: batch {i} is not an (inputs, target) pair",
                    hint="the factory must yield (x, y) tuples; inputs may be a tensor, a tuple or a dict of tensors, the target a tensor or None",
                )
            where = f"{self.field} batch {i}"
            inputs, target = as_batch(item[0], item[1], where)
            n = batch_size(inputs) if _has_samples(inputs) else 0
            if self.limit is not None and seen + n > self.limit:
                keep = self.limit - seen
                inputs = take(inputs, 0, keep)
                target = None if target is None else target[:keep]
                n = keep
            if n:
                self._check(inputs, target, where)
                yield inputs, target
            seen += n
            if self.limit is not None and seen >= self.limit:
                return

    def _read(self, source: Iterator[Any]) -> Iterator[Any]:
        """The factory's items; an exception it raises part-way (a broken connection, a
        bad shard) is the data source's failure, exit 3, naming the source and batch."""
        i = 0
        while True:
            try:
                item = next(source)
            except StopIteration:
                return
            except CICompressError:
                raise
            except Exception as e:
                detail = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
                raise DataError(
                    f"{self.field}: the factory {self.name} raised {type(e).__name__} at batch {i}"
                    + (f": {detail}" if detail else ""),
                    hint=f"fix the data source {self.name} (or its files, server or credentials); the gate needs every batch",
                ) from None
            yield item
            i += 1

    def first_batch(self, samples: int) -> Batch | None:
        """Up to ``samples`` samples of the first batch (a factory is not read again)."""
        if self._tensors is not None:
            return next(iter(self.batches(samples)), None)
        if self._first is None:
            self._first = next(iter(self.batches(samples)), None)
        if self._first is None:
            return None
        inputs, target = self._first
        return take(inputs, 0, samples), (None if target is None else target[:samples])

    def _check(self, inputs: Inputs, target: torch.Tensor | None, where: str) -> None:
        check_inputs(inputs, where)
        n = batch_size(inputs)
        if target is not None and len(target) != n:
            what = "x" if not isinstance(inputs, tuple | list | Mapping) else "the inputs"
            raise DataError(f"{where}: {what} has {n} samples but y has {len(target)}")
        if self.check_target is not None:
            self.check_target(target, where)

    def materialize(self) -> tuple[Inputs, torch.Tensor | None]:
        """All samples in memory (for training passes and latency batches)."""
        import torch

        if self._tensors is not None and self.limit is None:
            return self._tensors[0], self._tensors[1]
        pairs = list(self.batches(4096))  # one pass over a factory, not two
        if not pairs:
            raise DataError(
                f"{self.field}: the dataset is empty",
                hint="give a dataset with at least one sample",
            )
        targets = [t for _, t in pairs if t is not None]
        target = torch.cat(targets) if len(targets) == len(pairs) else None
        return concat([x for x, _ in pairs]), target

    def count(self) -> int:
        if self._samples is not None:
            return self._samples if self.limit is None else min(self._samples, self.limit)
        if self._tensors is not None:
            n = batch_size(self._tensors[0])
            return n if self.limit is None else min(n, self.limit)
        return sum(batch_size(x) for x, _ in self.batches(4096))

    def size_hint(self) -> int | None:
        """The number of samples if known without reading the data (None for a factory)."""
        return self.count() if self._tensors is not None or self._samples is not None else None

    def digest(self) -> str:
        """sha256 of the samples (a full read; the pipeline computes it while evaluating)."""
        d = HoldoutDigest()
        for x, y in self.batches(4096):
            d.update(x, y)
        return d.hexdigest()


class HoldoutDigest:
    """A streaming sha256 of ``(inputs, target)`` batches that does not depend on the batch size.

    Each input tensor's bytes and the target's bytes go into running hashes of their
    own, and the per-sample shapes are recorded whenever they change, so the same
    samples give the same digest whether they arrive in one batch or in many. This lets
    the pipeline compute the holdout's digest during the evaluation pass instead of
    reading the data twice.

    A single-tensor batch with a target hashes exactly as ci-compress always did (x's
    shape, x's bytes, y's bytes). Positional and keyword inputs add their structure
    (``positional``/``keyword`` and each tensor's name, keywords sorted) to the shapes,
    and a missing target hashes as the marker ``no target``.
    """

    def __init__(self) -> None:
        self._x: dict[str, Any] = {}
        self._y = hashlib.sha256()
        self._shapes: list[str] = []
        self._kind = ""
        self._target = True
        self._last: Any = None  # a single tensor's per-sample shape, as last recorded

    def update(self, x: Inputs, y: torch.Tensor | None = None) -> None:
        if isinstance(x, Mapping | tuple | list):
            self._structured(x)
        else:  # one tensor, once per batch: what _structured does for it, in short
            self._kind = ""
            if x.shape[1:] != self._last:
                shape = str(tuple(x.shape[1:]))
                if not self._shapes or self._shapes[-1] != shape:
                    self._shapes.append(shape)
                self._last = x.shape[1:]
            h = self._x.get("")
            if h is None:
                h = self._x[""] = hashlib.sha256()
            h.update(_bytes(x))
        if y is None:
            self._target = False
        else:
            self._y.update(_bytes(y))

    def _structured(self, x: Inputs) -> None:
        self._last = None
        tensors = named_tensors(x)
        if isinstance(x, Mapping):
            kind = "keyword"
        elif isinstance(x, tuple | list):
            kind = "positional"
        else:
            kind = ""
        self._kind = kind
        if kind:
            shape = ",".join(f"{n}={tuple(t.shape[1:])}" for n, t in tensors)
            shape = f"{kind}:{shape}"
        else:
            shape = str(tuple(tensors[0][1].shape[1:]))
        if not self._shapes or self._shapes[-1] != shape:
            self._shapes.append(shape)
        for name, t in tensors:
            self._x.setdefault(name, hashlib.sha256()).update(_bytes(t))

    def hexdigest(self) -> str:
        h = hashlib.sha256(";".join(self._shapes).encode())
        if self._kind:
            for name in sorted(self._x):
                h.update(name.encode() + b"\0")
                h.update(self._x[name].digest())
        else:
            h.update(self._x.get("", hashlib.sha256()).digest())
        h.update(self._y.digest() if self._target else b"no target")
        return h.hexdigest()


def _bytes(t: torch.Tensor) -> Any:
    """``t``'s bytes in memory order, as a buffer ``hashlib`` reads without a copy."""
    import torch

    if t.is_cpu and t.dtype in _plain_dtypes() and t.is_contiguous() and not t.requires_grad:
        return t.numpy()  # the same bytes as below, without five tensor calls per batch
    flat = t.detach().cpu().contiguous().reshape(-1)
    if flat.dtype in (torch.bfloat16, torch.bool) or flat.dtype.is_complex:
        flat = flat.view(torch.uint8) if flat.dtype != torch.bool else flat.to(torch.uint8)
    return flat.numpy().view("uint8").data


@functools.cache
def _plain_dtypes() -> frozenset[Any]:
    """Dtypes whose bytes ``Tensor.numpy()`` shares as they are."""
    import torch

    return frozenset(
        {torch.float16, torch.float32, torch.float64, torch.uint8, torch.int8, torch.int16}
        | {torch.int32, torch.int64}
    )


def _has_samples(inputs: Inputs) -> bool:
    return bool(named_tensors(inputs)) and named_tensors(inputs)[0][1].dim() > 0


def _tensor(value: Any, where: str, what: str) -> torch.Tensor:
    import numpy as np
    import torch

    if isinstance(value, torch.Tensor):
        return value
    try:
        return torch.from_numpy(np.asarray(value))
    except (TypeError, ValueError) as e:
        raise DataError(f"{where}: {what} must be arrays or tensors ({e})") from None


def as_batch(x: Any, y: Any, where: str) -> tuple[Inputs, torch.Tensor | None]:
    """A factory's ``(inputs, target)`` item as tensors, structure kept.

    A tuple is positional inputs; a list is positional when it holds arrays or tensors
    (otherwise it is one array written as nested lists); a mapping is keyword inputs.
    """
    import numpy as np
    import torch

    inputs: Inputs
    if isinstance(x, Mapping):
        inputs = {str(k): _tensor(v, where, f"input {k!r}") for k, v in x.items()}
    elif isinstance(x, tuple) or (
        isinstance(x, list) and x and all(isinstance(v, torch.Tensor | np.ndarray) for v in x)
    ):
        inputs = tuple(_tensor(v, where, "x and y") for v in x)
    else:
        inputs = _tensor(x, where, "x and y")
    return inputs, (None if y is None else _tensor(y, where, "x and y"))


def _from_arrays(
    inputs: Inputs,
    target: torch.Tensor | None,
    name: str,
    field: str,
    limit: int | None,
    check_target: TargetCheck | None,
) -> Dataset:
    import torch

    if not _has_samples(inputs) or batch_size(inputs) == 0:
        raise DataError(
            f"{field}: {name} is empty (0 samples)", hint="give a holdout with at least one sample"
        )
    ds = Dataset(name=name, field=field, limit=limit, check_target=check_target)
    ds._check(inputs, target, field)
    if target is not None and not torch.is_floating_point(target) and target.dtype != torch.bool:
        target = target.to(torch.int64)  # integer labels of any width, as int64
    inputs = (
        {k: v.contiguous() for k, v in inputs.items()}
        if isinstance(inputs, Mapping)
        else (
            tuple(t.contiguous() for t in inputs)
            if isinstance(inputs, tuple | list)
            else inputs.contiguous()
        )
    )
    ds._tensors = (inputs, None if target is None else target.contiguous())
    return ds


def digits_split(split: str) -> tuple[Any, Any]:
    """scikit-learn's digits (shipped with the package, no download), split 70/30, fixed seed."""
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)
    xs, ys = (x_tr, y_tr) if split == "train" else (x_te, y_te)
    return (xs / 16.0).astype(np.float32), ys.astype(np.int64)


def load_dataset(
    source: DataSource,
    base_dir: Path,
    *,
    field: str,
    check_target: TargetCheck | None = None,
) -> Dataset:
    """Open a data source from the config (files are read and checked now).

    ``check_target`` is the task's check of a target (every batch is checked with it).
    """
    if source.builtin == "digits":
        x, y = digits_split(source.split)
        return _from_arrays(
            *as_batch(x, y, field), f"digits/{source.split}", field, source.limit, check_target
        )
    if source.path:
        p = Path(source.path).expanduser()
        p = p if p.is_absolute() else base_dir / p
        if p.is_dir():
            return _from_folder(p, source, field, check_target)
        inputs, target = _read_file(p, field, source.inputs, source.target)
        return _from_arrays(inputs, target, p.name, field, source.limit, check_target)
    assert source.factory

    fn = import_factory(source.factory, path=f"{field}.factory", base_dir=base_dir)
    kwargs = dict(source.kwargs)
    ds = Dataset(
        name=source.factory,
        field=field,
        _factory=lambda: fn(**kwargs),
        limit=source.limit,
        check_target=check_target,
    )
    # Read only the first batch (kept for the load-time probe of the teacher): a
    # streaming factory is not run through twice.
    ds._first = next(iter(ds.batches(source.limit or 4096)), None)
    if ds._first is None:
        raise DataError(
            f"{field}: the factory {source.factory} yielded no samples",
            hint="give a holdout with at least one sample",
        )
    return ds


def _from_folder(
    p: Path, source: DataSource, field: str, check_target: TargetCheck | None
) -> Dataset:
    """A folder of ``.npy`` arrays or shard folders (:mod:`ci_compress.loading.npy`),
    read a few batches at a time; the samples equal those of an ``.npz`` of the same arrays."""
    import numpy as np
    import torch

    inputs, target = source.inputs, source.target
    shards = open_folder(p, _names(inputs, target), field)
    # every shard stores the same dtypes (open_folder checks), so whether the target
    # becomes int64 (as for a file read whole: any target that is neither floating nor
    # bool) is decided once, not per batch
    stored = None if target is None else shards.shards[0][target].dtype
    widen = stored is not None and stored.kind not in "fb" and stored != np.dtype(np.int64)

    def read(size: int) -> Iterator[tuple[Inputs, torch.Tensor | None]]:
        where = f"{field}.path"
        for arrays in shards.batches(size):  # open_folder found every name in every shard
            x, y = _select(arrays, where, inputs, target)
            if widen and y is not None:
                y = y.to(torch.int64)
            yield x, y

    ds = Dataset(
        name=p.name,
        field=field,
        _reader=read,
        _samples=shards.samples,
        limit=source.limit,
        check_target=check_target,
    )
    return ds


InputSpec = str | tuple[str, ...] | Mapping[str, str]


def _names(inputs: InputSpec, target: str | None) -> list[str]:
    if isinstance(inputs, str):
        wanted = [inputs]
    elif isinstance(inputs, Mapping):
        wanted = list(inputs.values())
    else:
        wanted = list(inputs)
    return wanted + ([target] if target is not None else [])


def _pick(
    arrays: Mapping[str, Any],
    p: Path,
    field: str,
    inputs: InputSpec,
    target: str | None,
) -> tuple[Inputs, torch.Tensor | None]:
    present = sorted(arrays)
    missing = [n for n in _names(inputs, target) if n not in arrays]
    if missing:
        if inputs == DEFAULT_INPUTS and target == DEFAULT_TARGET:
            raise DataError(
                f"{field}.path: {p.name} must hold arrays 'x' and 'y', has {present}",
                hint=f"or name its arrays with {field}.inputs and {field}.target",
            )
        which = "target" if missing[0] == target else "inputs"
        raise DataError(
            f"{field}.path: {p.name} has no array {missing[0]!r} (named by {field}.{which}); it holds {present}",
            hint=f"set {field}.inputs and {field}.target to names the file holds",
        )
    return _select(arrays, f"{field}.path", inputs, target)


def _select(
    arrays: Mapping[str, Any], where: str, inputs: InputSpec, target: str | None
) -> tuple[Inputs, torch.Tensor | None]:
    """The named arrays as tensors (every name present: :func:`_pick` checks)."""
    picked: Inputs
    if isinstance(inputs, str):
        picked = _tensor(arrays[inputs], where, "x and y")
    elif isinstance(inputs, Mapping):
        picked = {
            arg: _tensor(arrays[name], where, f"array {name!r}") for arg, name in inputs.items()
        }
    else:
        picked = tuple(_tensor(arrays[name], where, f"array {name!r}") for name in inputs)
    y = None if target is None else _tensor(arrays[target], where, "x and y")
    return picked, y


def _read_file(
    p: Path, field: str, inputs: InputSpec = DEFAULT_INPUTS, target: str | None = DEFAULT_TARGET
) -> tuple[Inputs, torch.Tensor | None]:
    import numpy as np
    import torch

    if not p.exists():
        raise DataError(
            f"{field}.path: file not found: {p}",
            hint="relative paths are relative to the config file",
        )
    if p.suffix == ".npz":
        try:
            with np.load(p, allow_pickle=False) as z:
                wanted = [n for n in _names(inputs, target) if n in z.files]
                arrays = {n: z[n] for n in wanted} | dict.fromkeys(
                    [n for n in z.files if n not in wanted]
                )
                return _pick(arrays, p, field, inputs, target)
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
            # a cut or foreign file: zipfile's BadZipFile, a member's zlib.error
            raise DataError(
                f"{field}.path: {p.name} is not a readable .npz file without pickles ({e})"
            ) from None
    if p.suffix in (".pt", ".pth"):
        try:
            obj = torch.load(str(p), map_location="cpu", weights_only=True)
        except Exception as e:
            raise DataError(
                f"{field}.path: {p.name} cannot be read with weights_only=True ({str(e).splitlines()[0][:200]})",
                hint="save a dict {'x': tensor, 'y': tensor} with torch.save",
            ) from None
        if not isinstance(obj, dict):
            raise DataError(
                f"{field}.path: {p.name} must hold a dict with keys 'x' and 'y'"
                if (inputs, target) == (DEFAULT_INPUTS, DEFAULT_TARGET)
                else f"{field}.path: {p.name} must hold a dict of named tensors, holds a {type(obj).__name__}"
            )
        return _pick(obj, p, field, inputs, target)
    if p.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            arrays = load_file(str(p))
        except (SafetensorError, OSError, ValueError) as e:
            raise DataError(
                f"{field}.path: {p.name} is not a readable safetensors file ({e})"
            ) from None
        return _pick(arrays, p, field, inputs, target)
    raise DataError(
        f"{field}.path: unsupported data file {p.name}",
        hint="use .npz, .pt or .safetensors holding the named arrays (x and y by default)",
    )
