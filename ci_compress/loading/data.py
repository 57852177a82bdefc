"""Holdout (and training) data: files, factories and the built-in digits set.

Every batch is checked as it is read: x floating point and finite, y a 1-D integer
label vector of the same length. An empty set is an error, not an accuracy of 0/0.
The digest (sha256 over the samples' bytes, in order, independent of batching)
identifies exactly the data that was evaluated; the pipeline computes it during the
evaluation pass, so a streaming factory is read once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ci_compress.errors import DataError
from ci_compress.refs import import_factory

if TYPE_CHECKING:
    import torch

    from ci_compress.config import DataSource

Batch = tuple["torch.Tensor", "torch.Tensor"]


@dataclass
class Dataset:
    """A re-iterable source of checked ``(x, y)`` batches."""

    name: str
    field: str
    _tensors: tuple[torch.Tensor, torch.Tensor] | None = None
    _factory: Callable[[], Iterable[Any]] | None = None
    limit: int | None = None

    def batches(self, batch_size: int) -> Iterator[Batch]:
        seen = 0
        if self._tensors is not None:
            x, y = self._tensors
            n = len(y) if self.limit is None else min(len(y), self.limit)
            for i in range(0, n, batch_size):
                yield x[i : min(i + batch_size, n)], y[i : min(i + batch_size, n)]
            return
        assert self._factory is not None
        try:
            source = iter(self._factory())
        except Exception as e:
            raise DataError(f"{self.field}: the factory raised {type(e).__name__}: {e}") from None
        for i, item in enumerate(source):
            if not (isinstance(item, tuple | list) and len(item) == 2):
                raise DataError(
                    f"{self.field}: batch {i} is not an (x, y) pair",
                    hint="the factory must yield (x, y) tuples",
                )
            x, y = _as_tensors(item[0], item[1], f"{self.field} batch {i}")
            if self.limit is not None and seen + len(y) > self.limit:
                keep = self.limit - seen
                x, y = x[:keep], y[:keep]
            if len(y):
                _check(x, y, f"{self.field} batch {i}")
                yield x, y
            seen += len(y)
            if self.limit is not None and seen >= self.limit:
                return

    def materialize(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All samples in memory (for training passes and latency batches)."""
        import torch

        if self._tensors is not None and self.limit is None:
            return self._tensors
        pairs = list(self.batches(4096))  # one pass over a factory, not two
        xs, ys = zip(*pairs, strict=True) if pairs else ((), ())
        if not xs:
            raise DataError(
                f"{self.field}: the dataset is empty",
                hint="give a dataset with at least one sample",
            )
        return torch.cat(xs), torch.cat(ys)

    def count(self) -> int:
        if self._tensors is not None:
            n = len(self._tensors[1])
            return n if self.limit is None else min(n, self.limit)
        return sum(len(y) for _, y in self.batches(4096))

    def size_hint(self) -> int | None:
        """The number of samples if known without reading the data (None for a factory)."""
        return self.count() if self._tensors is not None else None

    def digest(self) -> str:
        """sha256 of the samples (a full read; the pipeline computes it while evaluating)."""
        d = HoldoutDigest()
        for x, y in self.batches(4096):
            d.update(x, y)
        return d.hexdigest()


class HoldoutDigest:
    """A streaming sha256 of ``(x, y)`` batches that does not depend on the batch size.

    x bytes and y bytes go into two running hashes and the per-sample shapes are
    recorded whenever they change, so the same samples give the same digest
    whether they arrive in one batch or in many. This lets the pipeline compute the
    holdout's digest during the evaluation pass instead of reading the data twice.
    """

    def __init__(self) -> None:
        self._x = hashlib.sha256()
        self._y = hashlib.sha256()
        self._shapes: list[str] = []

    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:
        shape = str(tuple(x.shape[1:]))
        if not self._shapes or self._shapes[-1] != shape:
            self._shapes.append(shape)
        self._x.update(x.detach().contiguous().numpy().reshape(-1).view("uint8").data)
        self._y.update(y.detach().contiguous().numpy().reshape(-1).view("uint8").data)

    def hexdigest(self) -> str:
        h = hashlib.sha256(";".join(self._shapes).encode())
        h.update(self._x.digest())
        h.update(self._y.digest())
        return h.hexdigest()


def _as_tensors(x: Any, y: Any, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    import numpy as np
    import torch

    try:
        xt = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
        yt = y if isinstance(y, torch.Tensor) else torch.from_numpy(np.asarray(y))
    except (TypeError, ValueError) as e:
        raise DataError(f"{where}: x and y must be arrays or tensors ({e})") from None
    return xt, yt


def _check(x: torch.Tensor, y: torch.Tensor, where: str) -> None:
    import torch

    if not torch.is_floating_point(x):
        raise DataError(
            f"{where}: x has dtype {x.dtype}, expected floating point",
            hint="convert x to float32 when you build the data",
        )
    if x.dim() < 2:
        raise DataError(f"{where}: x has shape {tuple(x.shape)}, expected (samples, features...)")
    if y.dim() != 1:
        raise DataError(
            f"{where}: y has shape {tuple(y.shape)}, expected a 1-D vector of class labels"
        )
    if y.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise DataError(f"{where}: y has dtype {y.dtype}, expected integer class labels")
    if len(x) != len(y):
        raise DataError(f"{where}: x has {len(x)} samples but y has {len(y)}")
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise DataError(
            f"{where}: x contains {bad} NaN or infinite values",
            hint="clean or impute the data before gating",
        )
    if len(y) and int(y.min()) < 0:
        raise DataError(f"{where}: y contains negative labels ({int(y.min())})")


def _from_arrays(x: Any, y: Any, name: str, field: str, limit: int | None) -> Dataset:
    import torch

    xt, yt = _as_tensors(x, y, field)
    if len(yt) == 0:
        raise DataError(
            f"{field}: {name} is empty (0 samples)", hint="give a holdout with at least one sample"
        )
    _check(xt, yt, field)
    return Dataset(
        name=name,
        field=field,
        _tensors=(xt.contiguous(), yt.to(torch.int64).contiguous()),
        limit=limit,
    )


def digits_split(split: str) -> tuple[Any, Any]:
    """scikit-learn's digits (shipped with the package, no download), split 70/30, fixed seed."""
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)
    xs, ys = (x_tr, y_tr) if split == "train" else (x_te, y_te)
    return (xs / 16.0).astype(np.float32), ys.astype(np.int64)


def load_dataset(source: DataSource, base_dir: Path, *, field: str) -> Dataset:
    """Open a data source from the config (files are read and checked now)."""
    if source.builtin == "digits":
        x, y = digits_split(source.split)
        return _from_arrays(x, y, f"digits/{source.split}", field, source.limit)
    if source.path:
        p = Path(source.path).expanduser()
        p = p if p.is_absolute() else base_dir / p
        return _from_arrays(*_read_file(p, field), p.name, field, source.limit)
    assert source.factory

    fn = import_factory(source.factory, path=f"{field}.factory")
    kwargs = dict(source.kwargs)
    ds = Dataset(
        name=source.factory, field=field, _factory=lambda: fn(**kwargs), limit=source.limit
    )
    # Read only the first batch: a streaming factory is not run through twice.
    if next(iter(ds.batches(source.limit or 4096)), None) is None:
        raise DataError(
            f"{field}: the factory {source.factory} yielded no samples",
            hint="give a holdout with at least one sample",
        )
    return ds


def _read_file(p: Path, field: str) -> tuple[Any, Any]:
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
                if "x" not in z or "y" not in z:
                    raise DataError(
                        f"{field}.path: {p.name} must hold arrays 'x' and 'y', has {sorted(z.files)}"
                    )
                return z["x"], z["y"]
        except (ValueError, OSError, EOFError) as e:
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
        if not (isinstance(obj, dict) and "x" in obj and "y" in obj):
            raise DataError(f"{field}.path: {p.name} must hold a dict with keys 'x' and 'y'")
        return obj["x"], obj["y"]
    raise DataError(
        f"{field}.path: unsupported data file {p.name}", hint="use .npz or .pt holding x and y"
    )
