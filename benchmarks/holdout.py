"""A holdout data factory for the memory benchmark: the digits test split, repeated.

``digits_stream(repeat=50)`` yields 50 x 540 samples as fresh ``(x, y)`` numpy batches,
one at a time, without ever holding more than one batch (plus the 540-sample source):
the shape of a real streaming holdout (reading shards from disk). Each repeat adds a
small deterministic offset so the copies are not byte-identical.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


def digits_stream(repeat: int = 1, batch_size: int = 256) -> Iterator[tuple[Any, Any]]:
    import numpy as np

    from ci_compress.loading.data import digits_split

    x, y = digits_split("test")
    for r in range(repeat):
        shift = np.float32(r * 1e-4)
        for i in range(0, len(y), batch_size):
            yield x[i : i + batch_size] + shift, y[i : i + batch_size].copy()


def digits_arrays(repeat: int = 1) -> tuple[Any, Any]:
    """The same samples as one materialized pair of arrays (the contrast case)."""
    import numpy as np

    xs, ys = zip(*digits_stream(repeat, batch_size=1 << 30), strict=True)
    return np.concatenate(xs), np.concatenate(ys)
