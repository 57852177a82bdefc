"""Data files with several named arrays, factories of structured batches, and their errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from ci_compress.config import DataSource, LoadedConfig, parse_config
from ci_compress.errors import ConfigError, DataError, ModelOutputError
from ci_compress.evaluation.metrics import probe
from ci_compress.evaluation.tasks import Classification
from ci_compress.loading.data import load_dataset
from tests.helpers.configs import base_config

IDS = np.arange(24, dtype=np.int64).reshape(6, 4) % 7
MASK = np.ones((6, 4), dtype=np.int64)
LABELS = np.array([0, 1, 0, 1, 1, 0])


def write(tmp_path: Path, suffix: str) -> str:
    arrays = {"input_ids": IDS, "attention_mask": MASK, "labels": LABELS}
    name = f"h{suffix}"
    if suffix == ".npz":
        np.savez(tmp_path / name, **arrays)
    elif suffix == ".pt":
        torch.save({k: torch.from_numpy(v) for k, v in arrays.items()}, tmp_path / name)
    else:
        save_file({k: torch.from_numpy(v) for k, v in arrays.items()}, str(tmp_path / name))
    return name


@pytest.mark.parametrize("suffix", [".npz", ".pt", ".safetensors"])
def test_named_arrays_become_keyword_or_positional_inputs(tmp_path: Path, suffix: str) -> None:
    name = write(tmp_path, suffix)
    keyword = DataSource(
        path=name,
        inputs={"input_ids": "input_ids", "attention_mask": "attention_mask"},
        target="labels",
    )
    ds = load_dataset(
        keyword, tmp_path, field="data.holdout", check_target=Classification().check_target
    )
    (x, y), *rest = list(ds.batches(4))
    assert isinstance(x, dict) and list(x) == ["input_ids", "attention_mask"]
    assert x["input_ids"].dtype == torch.int64 and torch.equal(
        x["input_ids"], torch.from_numpy(IDS[:4])
    )
    assert torch.equal(y, torch.from_numpy(LABELS[:4])) and len(rest) == 1
    positional = DataSource(path=name, inputs=("input_ids", "attention_mask"), target=None)
    (xp, yp), _ = list(load_dataset(positional, tmp_path, field="data.holdout").batches(4))
    assert isinstance(xp, tuple) and len(xp) == 2 and yp is None
    assert (
        ds.count() == 6
        and ds.digest() != load_dataset(positional, tmp_path, field="data.holdout").digest()
    )


def test_a_missing_named_array_names_the_file_the_key_and_what_is_there(tmp_path: Path) -> None:
    name = write(tmp_path, ".npz")
    with pytest.raises(DataError) as e:
        load_dataset(
            DataSource(path=name, inputs="input_ids", target="label"),
            tmp_path,
            field="data.holdout",
        )
    assert str(e.value) == (
        "data.holdout.path: h.npz has no array 'label' (named by data.holdout.target); "
        "it holds ['attention_mask', 'input_ids', 'labels']"
    )
    assert e.value.exit_code == 3
    with pytest.raises(
        DataError, match=r"has no array 'token_ids' \(named by data.holdout.inputs\)"
    ):
        load_dataset(
            DataSource(path=name, inputs={"input_ids": "token_ids"}), tmp_path, field="data.holdout"
        )
    with pytest.raises(DataError, match="must hold arrays 'x' and 'y'"):  # the default names
        load_dataset(DataSource(path=name), tmp_path, field="data.holdout")


def test_array_names_belong_to_files_only() -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(base_config(data={"holdout": {"builtin": "digits", "inputs": ["a"]}}))
    assert str(e.value).startswith("data.holdout.inputs: names arrays in a data file (path)")
    with pytest.raises(ConfigError, match="data.holdout.target: 'a' is also an input"):
        parse_config(
            base_config(data={"holdout": {"path": "h.npz", "inputs": ["a"], "target": "a"}})
        )


def dict_batches(n: int = 10, batch: int = 4):
    """A factory yielding ({input_ids, attention_mask}, None): an embedding holdout."""
    ids = torch.arange(n * 3).reshape(n, 3) % 5
    for i in range(0, n, batch):
        yield (
            {
                "input_ids": ids[i : i + batch],
                "attention_mask": torch.ones(len(ids[i : i + batch]), 3),
            },
            None,
        )


def test_a_factory_may_yield_dict_inputs_without_a_target(tmp_path: Path) -> None:
    src = DataSource(
        factory="tests.unit.loading.test_data_sources:dict_batches", kwargs={"n": 10}, limit=6
    )
    ds = load_dataset(src, tmp_path, field="data.holdout")
    got = list(ds.batches(100))
    assert [len(x["input_ids"]) for x, _ in got] == [4, 2] and all(y is None for _, y in got)
    assert ds.count() == 6
    first = ds.first_batch(3)
    assert first is not None and len(first[0]["input_ids"]) == 3  # type: ignore[call-overload]
    with pytest.raises(DataError, match="needs a target"):
        list(
            load_dataset(
                src, tmp_path, field="data.holdout", check_target=Classification().check_target
            ).batches(4)
        )


class TakesIds(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(10, 2)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.emb(input_ids).mean(1)


def test_the_teacher_is_probed_on_the_first_batch_with_its_own_message(tmp_path: Path) -> None:
    src = DataSource(factory="tests.unit.loading.test_data_sources:dict_batches")
    ds = load_dataset(src, tmp_path, field="data.holdout")
    with pytest.raises(ModelOutputError) as e:
        probe(TakesIds(), ds)
    assert str(e.value).startswith(
        "the teacher model failed on data.holdout: TakesIds.forward() got an unexpected keyword argument 'attention_mask'"
    )
    assert "attention_mask: (4, 3) float32" in (e.value.hint or "")
    name = write(tmp_path, ".npz")
    ok = load_dataset(
        DataSource(path=name, inputs={"input_ids": "input_ids"}, target="labels"),
        tmp_path,
        field="data.holdout",
    )
    probe(TakesIds(), ok)  # integer token ids are what this model takes


def test_inputs_and_target_stay_out_of_dumps_at_their_defaults() -> None:
    cfg = parse_config(base_config())
    dumped = cfg.model_dump(mode="json")
    for key in ("inputs", "target"):
        assert key not in dumped["data"]["holdout"]
    for key in ("output", "hf"):
        assert key not in dumped["model"]
    assert (
        "device" not in dumped["runtime"]
        and "task" not in dumped
        and "metrics" not in dumped["thresholds"]
    )
    named = parse_config(
        base_config(
            data={"holdout": {"path": "h.npz", "inputs": {"input_ids": "ids"}, "target": None}}
        )
    )
    assert named.model_dump(mode="json")["data"]["holdout"]["target"] is None
    loaded = LoadedConfig(config=named, source=None, base_dir=Path("."), sha256="")
    assert loaded.config.data.holdout.inputs == {"input_ids": "ids"}
