"""Every model and holdout source issue 3 promises, loaded for real."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ci_compress.config import DataSource, ModelSource
from ci_compress.demo.models import digits_cnn, digits_mlp
from ci_compress.errors import ArtifactError, DataError
from ci_compress.loading.data import digits_split, load_dataset
from ci_compress.loading.models import load_model_file

FACTORY = "ci_compress.demo.models:digits_mlp"


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    x = torch.rand(16, 64)
    with torch.inference_mode():
        return torch.equal(a.eval()(x), b.eval()(x))


@pytest.mark.parametrize("factory", [digits_mlp, digits_cnn])
def test_torchscript_of_standard_layers_becomes_an_eager_model(tmp_path: Path, factory) -> None:
    torch.manual_seed(0)
    model = factory().eval()
    torch.jit.save(torch.jit.script(model), str(tmp_path / "m.pt"))
    loaded = load_model_file(tmp_path / "m.pt", ModelSource(path="m.pt"))
    assert loaded.kind == "torchscript"
    assert not isinstance(loaded.module, torch.jit.ScriptModule)
    assert _same(model, loaded.module)


def test_state_dict_pt_loads_with_weights_only_into_the_factory(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = digits_mlp()
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    loaded = load_model_file(tmp_path / "sd.pt", ModelSource(path="sd.pt", factory=FACTORY))
    assert loaded.kind == "state_dict" and _same(model, loaded.module)
    with pytest.raises(ArtifactError, match="is a state_dict"):
        load_model_file(tmp_path / "sd.pt", ModelSource(path="sd.pt"))


def test_state_dict_that_does_not_fit_the_factory(tmp_path: Path) -> None:
    torch.save(digits_mlp(hidden=(32,)).state_dict(), tmp_path / "sd.pt")
    with pytest.raises(ArtifactError, match="does not fit model.factory"):
        load_model_file(tmp_path / "sd.pt", ModelSource(path="sd.pt", factory=FACTORY))


def test_pickled_module_loads_only_with_opt_in(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = digits_mlp()
    torch.save(model, tmp_path / "full.pt")
    with pytest.raises(ArtifactError, match="refused") as e:
        load_model_file(tmp_path / "full.pt", ModelSource(path="full.pt"))
    assert "allow_pickle" in (e.value.hint or "")
    loaded = load_model_file(tmp_path / "full.pt", ModelSource(path="full.pt", allow_pickle=True))
    assert loaded.kind == "pickle" and _same(model, loaded.module)


def test_sha256_pin_is_checked(tmp_path: Path) -> None:
    torch.save(digits_mlp().state_dict(), tmp_path / "sd.pt")
    with pytest.raises(ArtifactError, match="sha256 of"):
        load_model_file(
            tmp_path / "sd.pt", ModelSource(path="sd.pt", factory=FACTORY, sha256="0" * 64)
        )


def _samples(ds, batch: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*ds.batches(batch), strict=True)
    return torch.cat(xs), torch.cat(ys)


def test_npz_and_pt_holdouts_match_the_builtin(tmp_path: Path) -> None:
    x, y = digits_split("test")
    np.savez(tmp_path / "h.npz", x=x, y=y)
    torch.save({"x": torch.from_numpy(x), "y": torch.from_numpy(y)}, tmp_path / "h.pt")
    builtin = load_dataset(DataSource(builtin="digits"), tmp_path, field="data.holdout")
    for name in ("h.npz", "h.pt"):
        ds = load_dataset(DataSource(path=name), tmp_path, field="data.holdout")
        assert ds.count() == len(y) == 540
        assert ds.digest() == builtin.digest()
        bx, by = _samples(ds)
        assert torch.equal(bx, torch.from_numpy(x)) and torch.equal(by, torch.from_numpy(y))


def holdout_batches(batch: int = 50):
    """A data factory used by the tests: digits test split in batches."""
    x, y = digits_split("test")
    for i in range(0, len(y), batch):
        yield x[i : i + batch], y[i : i + batch]


def test_factory_holdout_streams_batches_and_honours_limit(tmp_path: Path) -> None:
    src = DataSource(
        factory="tests.unit.loading.test_sources:holdout_batches", kwargs={"batch": 64}, limit=100
    )
    ds = load_dataset(src, tmp_path, field="data.holdout")
    assert ds.count() == 100
    x, _ = _samples(ds)
    assert torch.equal(x, torch.from_numpy(digits_split("test")[0][:100]))
    assert (
        ds.digest()
        == load_dataset(
            DataSource(builtin="digits", limit=100), tmp_path, field="data.holdout"
        ).digest()
    )


def test_holdout_digest_changes_with_one_sample(tmp_path: Path) -> None:
    x, y = digits_split("test")
    np.savez(tmp_path / "a.npz", x=x, y=y)
    x2 = x.copy()
    x2[7, 3] += 1.0 / 16
    np.savez(tmp_path / "b.npz", x=x2, y=y)
    a = load_dataset(DataSource(path="a.npz"), tmp_path, field="data.holdout").digest()
    b = load_dataset(DataSource(path="b.npz"), tmp_path, field="data.holdout").digest()
    assert a != b


def test_empty_holdout_is_an_error(tmp_path: Path) -> None:
    np.savez(tmp_path / "e.npz", x=np.zeros((0, 64), np.float32), y=np.zeros((0,), np.int64))
    with pytest.raises(DataError, match="empty"):
        load_dataset(DataSource(path="e.npz"), tmp_path, field="data.holdout")
