"""A ``.pt2`` from elsewhere is untrusted: ``torch.export.load`` would unpickle it.

torch reads each pickled member with ``weights_only=True`` and, when that fails, again
with ``weights_only=False``: a crafted example-inputs member runs code. ci-compress reads
the archive itself (:func:`ci_compress.packing.program.read_archive`).
"""

from __future__ import annotations

import contextlib
import pickle
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from ci_compress.errors import ArtifactError
from ci_compress.loading.exported import load_program


class _Touch:
    """Unpickling this creates ``path`` (standing in for any code an attacker runs)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (Path.touch, (str(self.path),))  # type: ignore[return-value]


def _saved(tmp_path: Path) -> tuple[Path, nn.Module]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    program = torch.export.export(model, (torch.randn(2, 4),))
    path = tmp_path / "model.pt2"
    torch.export.save(program, str(path))
    return path, model


def _rewrite(path: Path, change: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path) as z:
        members = {i.filename: z.read(i) for i in z.infolist()}
    for name in list(members):
        tail = name.split("/", 1)[-1]
        if tail in change:
            members[name] = change[tail]
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)


def test_a_crafted_example_inputs_member_runs_nothing(tmp_path: Path) -> None:
    path, model = _saved(tmp_path)
    marker = tmp_path / "pwned"
    _rewrite(path, {"data/sample_inputs/model.pt": pickle.dumps(_Touch(marker))})
    loaded = load_program(path)  # the example inputs are never read
    assert not marker.exists()
    x = torch.randn(2, 4)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    # what torch's own loader does with the same file: the threat is real
    with contextlib.suppress(Exception):
        torch.export.load(str(path))
    assert marker.exists()


def test_a_weight_stored_as_a_pickle_is_refused(tmp_path: Path) -> None:
    import json

    path, _ = _saved(tmp_path)
    with zipfile.ZipFile(path) as z:
        name = next(n for n in z.namelist() if n.endswith("model_weights_config.json"))
        config = json.loads(z.read(name))
    first = next(iter(config["config"]))
    config["config"][first]["use_pickle"] = True
    _rewrite(path, {"data/weights/model_weights_config.json": json.dumps(config).encode()})
    with pytest.raises(ArtifactError, match="stored as a pickle"):
        load_program(path)


def test_a_weight_shorter_than_its_shape_is_refused(tmp_path: Path) -> None:
    path, _ = _saved(tmp_path)
    _rewrite(path, {"data/weights/weight_0": b"\0" * 8})
    with pytest.raises(ArtifactError, match="needs more bytes"):
        load_program(path)
