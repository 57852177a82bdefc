"""Structured pruning: whole neurons and channels leave, the next layer is rewired."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from ci_compress.errors import ConfigError
from tests.helpers.passes_support import accuracy, apply, params, ship, split, teacher


def _widths(model: nn.Module) -> list[int]:
    return [m.weight.shape[0] for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)]


@pytest.mark.parametrize("norm", ["l1", "l2"])
def test_mlp_neurons_removed_by_the_ratio_and_output_layer_kept(norm: str, tmp_path: Path) -> None:
    model = teacher("mlp")
    assert _widths(model) == [256, 128, 10]
    before = params(model)
    pruned, (record,) = apply(
        model, {"type": "prune", "amount": 0.5, "structured": True, "norm": norm}
    )
    assert _widths(pruned) == [128, 64, 10]
    # 64*128+128 + 128*64+64 + 64*10+10: every weight of a removed neuron is gone
    assert params(pruned) == record.params_after == 17226 and before == 50826
    assert record.details["skipped"] == {"4": "output layer: its outputs are the model's outputs"}
    assert record.details["layers"] == {"0": [256, 128], "2": [128, 64]}
    reloaded, _info = ship(pruned, tmp_path)
    x = split("test")[0]
    with torch.no_grad():
        assert torch.equal(reloaded(x), pruned(x))
    assert params(reloaded) == 17226
    assert accuracy(reloaded) > 50  # still a classifier, before any fine-tuning


def test_cnn_channels_removed_and_batchnorm_and_flatten_rewired(tmp_path: Path) -> None:
    model = teacher("cnn")
    pruned, (record,) = apply(model, {"type": "prune", "amount": 0.25, "structured": True})
    assert _widths(pruned) == [12, 24, 48, 10]
    assert pruned[2].num_features == 12 and pruned[5].num_features == 24
    assert pruned[9].in_features == 24 * 16
    assert record.params_after < 0.6 * record.params_before
    reloaded, _ = ship(pruned, tmp_path)
    x = split("test")[0]
    with torch.no_grad():
        assert torch.equal(reloaded(x), pruned(x))


def test_structured_pruning_keeps_the_highest_norm_neurons() -> None:
    model = nn.Sequential(nn.Linear(64, 4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0] * 64, [0.1] * 64, [3.0] * 64, [0.2] * 64]))
    consumer = model[2].weight.detach().clone()
    pruned, _ = apply(model, {"type": "prune", "amount": 0.5, "structured": True})
    assert pruned[0].weight[:, 0].tolist() == [1.0, 3.0]
    assert torch.equal(pruned[2].weight, consumer[:, [0, 2]])


def test_layernorm_between_is_pruned_with_its_layer() -> None:
    # the hand-written Sequential code refused this (LayerNorm could not be rewired)
    model = nn.Sequential(nn.Linear(64, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    pruned, (record,) = apply(model, {"type": "prune", "amount": 0.5, "structured": True})
    assert _widths(pruned) == [4, 2] and pruned[1].normalized_shape == (4,)
    assert record.details["layers"] == {"0": [8, 4]}
    assert pruned(split("test")[0][:3]).shape == (3, 2)


@pytest.mark.parametrize("select", [{"exclude": ["0"]}, {"include": ["2"]}])
def test_a_structured_prune_that_changes_nothing_is_a_config_error(select: dict) -> None:
    model = nn.Sequential(nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.raises(ConfigError) as e:
        apply(model, {"type": "prune", "amount": 0.5, "structured": True, **select})
    assert str(e.value).startswith("passes[0].include: structured pruning would change nothing")
    assert "'2': output layer: its outputs are the model's outputs" in str(e.value)


def test_structured_needs_amount() -> None:
    with pytest.raises(ConfigError, match="structured pruning needs amount"):
        apply(teacher("mlp"), {"type": "prune", "threshold": 0.1, "structured": True})


@pytest.mark.parametrize("importance", ["magnitude", "taylor"])
def test_gradual_structured_pruning_follows_the_cubic_schedule_and_fine_tunes(
    importance: str, tmp_path: Path
) -> None:
    # one step pruned to the same widths loses most of the accuracy (57% measured on the
    # CNN at 0.5); three steps with fine-tuning after each recover it
    model = teacher("mlp")
    pruned, (record,) = apply(
        model,
        {
            "type": "prune",
            "amount": 0.75,
            "structured": True,
            "importance": importance,
            "steps": 3,
            "fine_tune_epochs": 1,
        },
    )
    assert _widths(pruned) == [64, 32, 10]  # floor(n * 0.25): the one-step widths
    schedule = record.details["schedule"]
    assert len(schedule) == 3 and all("loss" in str(step) for step in schedule)
    # after step t each group keeps int(n * (1 - 0.75 * (1 - (1 - t/3)^3)))
    kept = [1 - 0.75 * (1 - (1 - t / 3) ** 3) for t in (1, 2, 3)]
    hidden = [(int(256 * k + 1e-6), int(128 * k + 1e-6)) for k in kept]
    expected = [64 * a + a + a * b + b + b * 10 + 10 for a, b in hidden]
    assert [step["parameters"] for step in schedule] == expected
    assert record.details["layers"] == {"0": [256, 64], "2": [128, 32]}
    one_shot, _ = apply(teacher("mlp"), {"type": "prune", "amount": 0.75, "structured": True})
    reloaded, _ = ship(pruned, tmp_path)
    assert accuracy(reloaded) > accuracy(one_shot) + 10
    assert accuracy(reloaded) > 90
