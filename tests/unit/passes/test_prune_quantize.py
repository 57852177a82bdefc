"""Each pass's measured effect on real models."""

from __future__ import annotations

import pytest
import torch

from ci_compress.config import parse_config
from ci_compress.demo.models import digits_cnn, digits_mlp
from ci_compress.errors import ConfigError
from ci_compress.layers.inspect import count_parameters
from ci_compress.passes.base import PassContext
from ci_compress.passes.registry import PASSES
from ci_compress.passes.run import run_pass
from tests.helpers.configs import base_config


def _apply(model: torch.nn.Module, *passes: dict) -> list:
    cfg = parse_config(base_config(passes=list(passes)))
    return [
        run_pass(PASSES[p.type], model, p, PassContext(seed=0, index=i))
        for i, p in enumerate(cfg.passes)
    ]


def _weights(model: torch.nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear | torch.nn.Conv2d)]


@pytest.mark.parametrize("amount", [0.0, 0.3, 0.5, 0.9])
@pytest.mark.parametrize("factory", [digits_mlp, digits_cnn])
def test_global_prune_reaches_exactly_the_amount(factory, amount: float) -> None:
    torch.manual_seed(1)
    model = factory()
    _apply(model, {"type": "prune", "amount": amount})
    ws = _weights(model)
    total = sum(w.numel() for w in ws)
    zeros = sum(int((w == 0).sum()) for w in ws)
    assert zeros == round(amount * total)


def test_layer_scope_prunes_each_layer_by_the_amount() -> None:
    torch.manual_seed(1)
    model = digits_mlp()
    _apply(model, {"type": "prune", "amount": 0.6, "scope": "layer"})
    for w in _weights(model):
        assert int((w == 0).sum()) == round(0.6 * w.numel())


def test_prune_respects_include_and_exclude() -> None:
    torch.manual_seed(1)
    model = digits_mlp()
    (record,) = _apply(
        model, {"type": "prune", "amount": 0.5, "include": ["re:[0-9]+"], "exclude": ["4"]}
    )
    assert record.modules == ["0", "2"]
    assert int((model[4].weight == 0).sum()) == 0


def test_prune_threshold_zeroes_small_weights() -> None:
    torch.manual_seed(1)
    model = digits_mlp()
    _apply(model, {"type": "prune", "threshold": 0.05})
    for w in _weights(model):
        assert bool(((w == 0) | (w.abs() >= 0.05)).all())
        assert int((w == 0).sum()) > 0


def test_pattern_matching_nothing_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"passes\[0\].include: pattern 'classifier' matches no"):
        _apply(digits_mlp(), {"type": "prune", "amount": 0.5, "include": ["classifier"]})


def test_quantize_int8_keeps_outputs_close_and_counts_parameters() -> None:
    torch.manual_seed(1)
    model = digits_mlp().eval()
    before = count_parameters(model)
    x = torch.rand(16, 64)
    ref = model(x).detach()
    (record,) = _apply(model, {"type": "quantize"})
    assert record.modules == ["0", "2", "4"]
    assert count_parameters(model)[0] == before[0]
    assert (model(x) - ref).abs().max() < 0.05
