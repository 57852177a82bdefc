"""``distill`` with ``loss: mse | cosine``: a model whose outputs are not class scores
(an embedding, a regression) is distilled on the outputs themselves, without labels."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ci_compress.config import parse_config
from ci_compress.errors import ConfigError
from ci_compress.passes import distill
from ci_compress.passes.base import PassContext
from tests.helpers.configs import base_config


def _embedder() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(32, 128), nn.GELU(), nn.Linear(128, 128), nn.GELU(), nn.Linear(128, 16)
    )


def _unlabelled(x: torch.Tensor) -> Any:
    def gen() -> Any:
        for i in range(0, len(x), 64):
            yield x[i : i + 64], None

    return gen


def _pass(**raw: Any) -> Any:
    return parse_config(base_config(passes=[{"type": "distill", **raw}])).passes[0]


def _cosine(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float(F.cosine_similarity(a(x), b(x), dim=-1).mean())


@pytest.mark.parametrize("loss", ["cosine", "mse"])
def test_an_embedding_student_learns_the_teachers_outputs_without_labels(loss: str) -> None:
    teacher = _embedder().eval()
    x = torch.randn(1024, 32, generator=torch.Generator().manual_seed(1))
    test = torch.randn(256, 32, generator=torch.Generator().manual_seed(2))
    ctx = PassContext(seed=0, index=0, train_data=_unlabelled(x))
    config = _pass(width=0.25, loss=loss, epochs=20, lr=3e-3)
    untrained = distill.make_student(teacher, config, 0, "passes[0]", example=x[:4])
    record = distill.apply(teacher, config, ctx)
    student = record.replacement
    assert student is not None and student[0].out_features == 32  # a quarter of 128
    before, after = _cosine(untrained, teacher, test), _cosine(student, teacher, test)
    assert after > 0.9 and after > before + 0.15, (before, after)
    assert record.details["training"]["steps"] == 20 * 16


def test_kl_still_needs_labels() -> None:
    teacher = _embedder().eval()
    ctx = PassContext(seed=0, index=0, train_data=_unlabelled(torch.randn(64, 32)))
    with pytest.raises(ConfigError, match="needs a target"):
        distill.apply(teacher, _pass(width=0.5), ctx)
