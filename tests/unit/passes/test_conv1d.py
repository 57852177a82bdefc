"""GPT-2's blocks are Hugging Face ``Conv1D`` (a Linear with its weight transposed): every
pass that handles Linear layers selects them, through the equal ``nn.Linear``."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import nn

from ci_compress.config import parse_config
from ci_compress.passes.base import PassContext, conv1d_to_linear
from ci_compress.passes.registry import PASSES
from ci_compress.passes.run import run_pass
from tests.helpers.configs import base_config

transformers = pytest.importorskip("transformers")

BLOCK = ["transformer.h.0.attn.c_attn", "transformer.h.0.attn.c_proj"]
BLOCK += ["transformer.h.0.mlp.c_fc", "transformer.h.0.mlp.c_proj"]


def _gpt2() -> Any:
    config = transformers.GPT2Config(
        vocab_size=100, n_positions=16, n_embd=32, n_layer=1, n_head=2, tie_word_embeddings=False
    )
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(config).eval()


def _ids() -> torch.Tensor:
    return torch.randint(0, 100, (4, 16), generator=torch.Generator().manual_seed(1))


def test_conv1d_becomes_the_equal_linear_only_where_the_patterns_select() -> None:
    model, ids = _gpt2(), _ids()
    with torch.no_grad():
        before = model(ids).logits
    assert conv1d_to_linear(model, ["*.mlp.*"], ["*.c_proj"]) == ["transformer.h.0.mlp.c_fc"]
    assert type(model.transformer.h[0].mlp.c_fc) is nn.Linear
    assert type(model.transformer.h[0].mlp.c_proj).__name__ == "Conv1D"
    assert conv1d_to_linear(model) == [n for n in BLOCK if n != "transformer.h.0.mlp.c_fc"]
    with torch.no_grad():
        assert torch.equal(model(ids).logits, before)


@pytest.mark.parametrize(
    "raw",
    [
        {"type": "prune", "amount": 0.5},
        {"type": "quantize", "scheme": "int8-weight-only"},
        {"type": "quantize", "scheme": "int8-dynamic"},
        {"type": "cluster", "bits": 4},
        {"type": "lowrank", "rank": 2},
    ],
    ids=lambda raw: "-".join(str(v) for v in raw.values()),
)
def test_every_linear_pass_compresses_gpt2_blocks(raw: dict[str, Any]) -> None:
    # before: each pass selected only lm_head (prune, lowrank) and the tables; the four
    # Conv1D layers of every block were left float and whole
    teacher, ids = _gpt2(), _ids()
    model = copy.deepcopy(teacher)
    config = parse_config(base_config(passes=[raw])).passes[0]
    record = run_pass(PASSES[raw["type"]], model, config, PassContext(seed=0, index=0))
    assert set(BLOCK) <= set(record.modules) | set(record.details.get("ranks", {}))
    for name in BLOCK:
        assert type(model.get_submodule(name)).__name__ != "Conv1D", name
    with torch.no_grad():
        out, ref = model(ids).logits, teacher(ids).logits
    assert out.shape == ref.shape and bool(torch.isfinite(out).all())
    if raw["type"] == "quantize":
        assert (out - ref).abs().max() < 0.05 * ref.abs().max()
