"""Contract of every registered pass: it applies to the demo MLP and CNN, the result
still runs, and it packs to a .ccz that reloads with equal outputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ci_compress.passes.registry import PASSES
from tests.helpers.passes_support import EXAMPLES, apply, ship, split, teacher


def test_every_registered_pass_has_an_example() -> None:
    assert sorted(EXAMPLES) == sorted(PASSES)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("name", sorted(PASSES))
def test_pass_applies_runs_packs_and_reloads(name: str, kind: str, tmp_path: Path) -> None:
    x = split("test")[0][:32]
    model, (record,) = apply(teacher(kind), EXAMPLES[name])
    assert record.name == name and record.modules, record
    with torch.no_grad():
        out = model(x)
    assert out.shape == (32, 10) and torch.isfinite(out).all()
    reloaded, info = ship(model, tmp_path)
    assert info.file_bytes == (tmp_path / "student.ccz").stat().st_size
    with torch.no_grad():
        assert torch.equal(reloaded(x), out)
    assert PASSES[name].__doc__ and PASSES[name].apply.__doc__


@pytest.mark.parametrize(
    "order", [["prune", "cluster"], ["lowrank", "quantize"], ["distill", "prune", "quantize"]]
)
def test_passes_compose_in_any_order(order: list[str], tmp_path: Path) -> None:
    x = split("test")[0][:16]
    model, records = apply(teacher("mlp"), *[EXAMPLES[n] for n in order])
    assert [r.name for r in records] == order
    reloaded, _ = ship(model, tmp_path)
    with torch.no_grad():
        assert torch.equal(reloaded(x), model(x))
