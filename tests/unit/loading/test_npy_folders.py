"""Holdouts in folders of .npy arrays or shard folders (ci_compress/loading/npy.py):
the same samples and digest as an .npz, read a batch at a time, hostile headers refused."""

from __future__ import annotations

import itertools
import json
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ci_compress.config import DataSource
from ci_compress.errors import DataError
from ci_compress.loading.data import digits_split, load_dataset
from tests.helpers.cli import run_cli
from tests.helpers.configs import base_config, write_config


def _write_shards(folder: Path, x: np.ndarray, y: np.ndarray, cuts: list[int]) -> None:
    bounds = [0, *cuts, len(y)]
    for k, (a, b) in enumerate(itertools.pairwise(bounds)):
        shard = folder / f"part-{k:03d}"
        shard.mkdir(parents=True)
        np.save(shard / "x.npy", x[a:b])
        np.save(shard / "y.npy", y[a:b])


def _open(path: Path, **kw: object) -> object:
    return load_dataset(DataSource(path=str(path), **kw), path.parent, field="data.holdout")  # type: ignore[arg-type]


def test_a_folder_and_its_shards_hold_the_samples_and_digest_of_the_npz(tmp_path: Path) -> None:
    x, y = digits_split("test")
    np.savez(tmp_path / "h.npz", x=x, y=y)
    (tmp_path / "one").mkdir()
    np.save(tmp_path / "one" / "x.npy", x)
    np.save(tmp_path / "one" / "y.npy", y)
    _write_shards(tmp_path / "sharded", x, y, [100, 333])
    sets = {name: _open(tmp_path / name) for name in ("h.npz", "one", "sharded")}
    digests = {name: ds.digest() for name, ds in sets.items()}  # type: ignore[attr-defined]
    assert len(set(digests.values())) == 1, digests
    for ds in sets.values():
        assert ds.size_hint() == 540  # type: ignore[attr-defined]
        got = [(bx, by) for bx, by in ds.batches(64)]  # type: ignore[attr-defined]
        assert sum(len(by) for _, by in got) == 540
        assert max(len(by) for _, by in got) <= 64  # the batch size asked for, across shards
        assert str(got[0][1].dtype) == "torch.int64"
    limited = _open(tmp_path / "sharded", limit=150)
    assert limited.count() == 150  # type: ignore[attr-defined]
    assert sum(len(by) for _, by in limited.batches(64)) == 150  # type: ignore[attr-defined]


def test_reading_a_folder_holds_one_batch_not_the_array(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((80_000, 64), dtype=np.float32)  # 20 MB
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", rng.integers(0, 10, 80_000))
    del x
    ds = _open(tmp_path)
    tracemalloc.start()
    try:
        seen = sum(len(by) for _, by in ds.batches(256))  # type: ignore[attr-defined]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seen == 80_000
    assert peak < 2_000_000, f"peak {peak:,} bytes while reading a 20 MB array in batches of 256"


def test_each_shard_file_is_opened_once_and_closed_when_reading_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    x, y = digits_split("test")
    _write_shards(tmp_path / "h", x, y, [200, 400])  # 3 shards, 540 samples
    ds = _open(tmp_path / "h")
    opened: list[Any] = []
    real_open = Path.open

    def counting_open(self: Path, *args: Any, **kwargs: Any) -> Any:
        f = real_open(self, *args, **kwargs)
        opened.append(f)
        return f

    monkeypatch.setattr(Path, "open", counting_open)
    got = [by for _, by in ds.batches(16)]  # type: ignore[attr-defined]
    assert sum(len(b) for b in got) == 540 and len(got) == 13 + 13 + 9
    assert len(opened) == 6  # x.npy and y.npy of each shard, not of each batch
    assert all(f.closed for f in opened)
    opened.clear()
    reader = ds.batches(16)  # type: ignore[attr-defined]
    next(reader)
    assert len(opened) == 2 and not any(f.closed for f in opened)
    reader.close()  # the caller stops early (an error in a model)
    assert all(f.closed for f in opened)


def _header_lies(folder: Path) -> None:
    np.save(folder / "y.npy", np.zeros(10, dtype=np.int64))
    np.save(folder / "x.npy", np.zeros((10, 4), dtype=np.float32))
    raw = (folder / "x.npy").read_bytes().replace(b"(10, 4)", b"(99999999, 4)", 1)
    (folder / "x.npy").write_bytes(raw)


def _objects(folder: Path) -> None:
    np.save(folder / "x.npy", np.array([{"a": 1}] * 3, dtype=object), allow_pickle=True)
    np.save(folder / "y.npy", np.zeros(3, dtype=np.int64))


def _fortran(folder: Path) -> None:
    np.save(folder / "x.npy", np.asfortranarray(np.zeros((3, 4), dtype=np.float32)))
    np.save(folder / "y.npy", np.zeros(3, dtype=np.int64))


def _shards_disagree(folder: Path) -> None:
    for k, width in enumerate((4, 5)):
        d = folder / f"p{k}"
        d.mkdir()
        np.save(d / "x.npy", np.zeros((3, width), dtype=np.float32))
        np.save(d / "y.npy", np.zeros(3, dtype=np.int64))


def _shard_misses_y(folder: Path) -> None:
    for k in range(2):
        d = folder / f"p{k}"
        d.mkdir()
        np.save(d / "x.npy", np.zeros((3, 4), dtype=np.float32))
        if k == 0:
            np.save(d / "y.npy", np.zeros(3, dtype=np.int64))


def _counts_disagree(folder: Path) -> None:
    np.save(folder / "x.npy", np.zeros((3, 4), dtype=np.float32))
    np.save(folder / "y.npy", np.zeros(4, dtype=np.int64))


def _nothing(folder: Path) -> None:
    (folder / "notes.txt").write_text("no arrays here")


def _not_npy(folder: Path) -> None:
    (folder / "x.npy").write_bytes(b"PK\x03\x04 not an npy")
    np.save(folder / "y.npy", np.zeros(3, dtype=np.int64))


def _zero_samples(folder: Path) -> None:
    np.save(folder / "x.npy", np.zeros((0, 4), dtype=np.float32))
    np.save(folder / "y.npy", np.zeros(0, dtype=np.int64))


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (_header_lies, "declares shape (99999999, 4) of float32"),
        (_objects, "holds Python objects (dtype object), which would need unpickling"),
        (_fortran, "is stored in Fortran order"),
        (_shards_disagree, "shard p1 stores"),
        (_shard_misses_y, "p1/y.npy is missing (shard p1 holds ['x'])"),
        (_counts_disagree, "disagree on the number of samples"),
        (_nothing, "holds no x.npy and no shard folders"),
        (_not_npy, "is not a readable .npy file"),
        (_zero_samples, "is empty (0 samples)"),
    ],
)
def test_a_hostile_folder_is_refused_before_any_data_is_read(
    tmp_path: Path, make: object, fragment: str
) -> None:
    folder = tmp_path / "holdout"
    folder.mkdir()
    make(folder)  # type: ignore[operator]
    with pytest.raises(DataError) as e:
        _open(folder)
    assert fragment in str(e.value)


def test_the_gate_reads_a_sharded_holdout_and_records_the_npz_digest(workdir: Path) -> None:
    x, y = digits_split("test")
    np.savez(workdir / "h.npz", x=x, y=y)
    _write_shards(workdir / "holdout", x, y, [200, 201, 400])
    digests = []
    for path in ("h.npz", "holdout"):
        cfg = base_config(data={"holdout": {"path": path}}, report={"dir": f"report-{path}"})
        write_config(workdir, cfg)
        proc = run_cli("run", "--config", "compress.yaml", "--quiet", cwd=workdir)
        assert proc.returncode == 0, proc.stderr
        report = json.loads((workdir / f"report-{path}" / "report.json").read_text())
        assert report["holdout"]["samples"] == 540
        digests.append(report["holdout"]["sha256"])
    assert digests[0] == digests[1]
    bad = base_config(data={"holdout": {"path": "holdout"}})
    (workdir / "holdout" / "part-002" / "y.npy").write_bytes(b"\x93NUMPY truncated")
    write_config(workdir, bad)
    proc = run_cli("run", "--config", "compress.yaml", "--quiet", cwd=workdir)
    assert proc.returncode == 3
    assert "data.holdout.path: part-002/y.npy is not a readable .npy file" in proc.stderr
    assert not (workdir / "report" / "student.ccz").exists()


@pytest.mark.parametrize(
    "array",
    [
        np.zeros((7, 3), dtype=np.float32),
        np.arange(5, dtype=np.int64),
        np.ones((2, 3, 4), dtype=">f8"),  # big-endian
        np.array([True, False]),
        np.zeros((10,), dtype=np.uint8),
        np.zeros((0, 4), dtype=np.float16),
        np.asfortranarray(np.zeros((3, 4), dtype=np.float32)),
        np.array(3.0),  # a scalar: ()
        np.zeros((1, 1), dtype="<U3"),
    ],
    ids=lambda a: f"{a.dtype.str}{a.shape}",
)
def test_a_plain_header_is_read_without_numpy_s_parser_to_the_same_result(
    tmp_path: Path, array: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    from numpy.lib import format as npformat

    from ci_compress.loading import npy

    path = tmp_path / "a.npy"
    np.save(path, array)
    with path.open("rb") as f:
        version = npformat.read_magic(f)
        want = npformat.read_array_header_1_0(f)
        offset = f.tell()
        f.seek(0)
        npformat.read_magic(f)
        got = npy._plain_header(f, version)  # type: ignore[arg-type]
        assert f.tell() == offset
    assert got == want
    assert got is not None and got[0] == array.shape and got[2] == array.dtype

    def refuse(*_: object) -> None:
        raise AssertionError("numpy's header parser was called for a plain header")

    monkeypatch.setattr(npformat, "read_array_header_1_0", refuse)
    if array.ndim and not np.isfortran(array):
        opened = npy.open_npy(path, "data.holdout")
        assert (opened.shape, opened.dtype, opened.offset) == (array.shape, array.dtype, offset)


@pytest.mark.parametrize(
    ("header", "fragment"),
    [
        # what the pattern does not take goes to numpy's parser, which words the error
        (b"{'descr': '<f4', 'fortran_order': False, 'shape': (010, 4), }", "Cannot parse header"),
        (b"{'descr': '<q7', 'fortran_order': False, 'shape': (10, 4), }", "not a valid dtype"),
        (b"{'descr': '<f4', 'shape': (10, 4), }", "does not contain the correct keys"),
    ],
)
def test_a_header_the_pattern_does_not_take_gets_numpy_s_error(
    tmp_path: Path, header: bytes, fragment: str
) -> None:
    folder = tmp_path / "holdout"
    folder.mkdir()
    np.save(folder / "y.npy", np.zeros(10, dtype=np.int64))
    body = header.ljust(118) + b"\n"
    raw = b"\x93NUMPY\x01\x00" + len(body).to_bytes(2, "little") + body + bytes(160)
    (folder / "x.npy").write_bytes(raw)
    with pytest.raises(DataError, match="x.npy is not a readable .npy file") as e:
        _open(folder)
    assert fragment in str(e.value)
