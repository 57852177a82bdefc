"""``distill layers:`` (a student made of some of the teacher's blocks, weights copied)
and ``hidden:`` (each kept block also matches the teacher's hidden state the next kept
block reads), on tiny Hugging Face models built from a config with random weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ci_compress.config import parse_config
from ci_compress.errors import ConfigError
from ci_compress.packing.file import load_student, pack
from ci_compress.passes import distill
from ci_compress.passes.base import PassContext
from ci_compress.passes.blocks import BlockOutputs, find_blocks
from tests.helpers.configs import base_config

transformers = pytest.importorskip("transformers")

VOCAB, LENGTH = 100, 16


def _bert(layers: int = 4, seed: int = 0) -> nn.Module:
    """Weights drawn 10x wider than BERT's (0.2): each block changes its input a lot,
    as a trained one does (at 0.02 every block is close to the identity)."""
    torch.manual_seed(seed)
    config = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=LENGTH,
        initializer_range=0.2,
    )
    return transformers.BertModel(config).eval()


def _tokens(n: int, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(n, LENGTH, dtype=torch.long)
    return {"input_ids": torch.randint(0, VOCAB, (n, LENGTH), generator=g), "attention_mask": mask}


def _data(x: dict[str, torch.Tensor]) -> Any:
    def gen() -> Any:
        n = len(x["input_ids"])
        for i in range(0, n, 64):
            yield {k: v[i : i + 64] for k, v in x.items()}, None

    return gen


def _pass(**raw: Any) -> Any:
    return parse_config(base_config(passes=[{"type": "distill", **raw}])).passes[0]


def test_layers_keep_those_blocks_with_the_teachers_weights() -> None:
    teacher = _bert(layers=6)
    student = distill.derive_student(teacher, None, "passes[0]", None, (0, 4, 5))
    assert len(student.encoder.layer) == 3 and len(teacher.encoder.layer) == 6
    assert student.config.num_hidden_layers == 3 and teacher.config.num_hidden_layers == 6
    for new, old in enumerate((0, 4, 5)):
        mine, theirs = student.encoder.layer[new].state_dict(), teacher.encoder.layer[old]
        for name, value in theirs.state_dict().items():
            assert torch.equal(mine[name], value), (new, name)
    assert torch.equal(
        student.embeddings.word_embeddings.weight, teacher.embeddings.word_embeddings.weight
    )
    # the student is the teacher with blocks 1-3 skipped: same as running the teacher's
    # kept blocks by hand
    x = _tokens(4)
    with torch.no_grad():
        h = teacher.embeddings(input_ids=x["input_ids"])
        for i in (0, 4, 5):
            out = teacher.encoder.layer[i](h)
            h = out[0] if isinstance(out, tuple) else out
        assert torch.allclose(student(**x).last_hidden_state, h, atol=1e-5)


def test_a_gpt2_keeps_its_cache_slots_consistent() -> None:
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=32, n_embd=32, n_layer=4, n_head=2
    )
    teacher = transformers.GPT2LMHeadModel(config).eval()
    student = distill.derive_student(teacher, None, "passes[0]", None, (1, 3))
    assert len(student.transformer.h) == 2 and student.config.n_layer == 2
    indices = [m.layer_idx for m in student.transformer.h.modules() if hasattr(m, "layer_idx")]
    assert set(indices) == {0, 1}
    ids = torch.randint(0, VOCAB, (2, 8))
    with torch.no_grad():  # generation with the key/value cache runs on the 2-block model
        out = student.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert out.shape == (2, 12)


def test_the_shipped_student_reloads_without_a_factory(tmp_path: Path) -> None:
    teacher = _bert()
    x = _tokens(64)
    record = distill.apply(
        teacher,
        _pass(layers=[0, 3], loss="cosine", epochs=1, hidden=1.0),
        PassContext(seed=0, index=0, train_data=_data(x), output="last_hidden_state"),
    )
    student = record.replacement
    assert student is not None and len(student.encoder.layer) == 2
    pack(student, tmp_path / "s.ccz", example=_tokens(4))
    shipped = load_student(tmp_path / "s.ccz")  # no factory
    test = _tokens(8, seed=5)
    with torch.no_grad():
        want = student(**test).last_hidden_state
        got = shipped(**test)
    got = got["last_hidden_state"] if not isinstance(got, torch.Tensor) else got
    assert torch.allclose(got, want, atol=1e-5)


def _mismatch(student: nn.Module, teacher: nn.Module, x: dict[str, torch.Tensor]) -> list[float]:
    """1 - cosine per token between student block k and the teacher block it matches
    (kept [0, 3] of 4: teacher blocks 2 and 3)."""
    _, s_stack = find_blocks(student, "f")
    _, t_stack = find_blocks(teacher, "f")
    with torch.no_grad(), BlockOutputs(s_stack, [0, 1]) as s, BlockOutputs(t_stack, [2, 3]) as t:
        student(**x)
        teacher(**x)
        return [
            float((1 - F.cosine_similarity(a, b, dim=-1)).mean())
            for a, b in zip(s.take(), t.take(), strict=True)
        ]


def test_the_hidden_loss_brings_the_kept_blocks_closer_to_the_teachers() -> None:
    teacher = _bert()
    x, test = _tokens(256), _tokens(128, seed=9)
    found = {}
    for weight in (0.0, 1.0):
        record = distill.apply(
            teacher,
            _pass(layers=[0, 3], loss="cosine", epochs=2, lr=3e-3, hidden=weight),
            PassContext(seed=0, index=0, train_data=_data(x), output="last_hidden_state"),
        )
        assert record.replacement is not None
        found[weight] = _mismatch(record.replacement, teacher, test)
    assert record.details["hidden"] == {"teacher_blocks": [2, 3], "cached": True}
    without, with_hidden = found[0.0], found[1.0]
    untrained = _mismatch(distill.derive_student(teacher, None, "p", None, (0, 3)), teacher, test)
    # the first kept block is trained to produce what teacher block 2 outputs: its
    # mismatch falls below the plain distillation's, which never asks for it (measured
    # 0.64 untrained, 0.36 without, 0.26 with)
    assert with_hidden[0] < 0.85 * without[0] < 0.85 * untrained[0], found


def test_hidden_states_beyond_the_cache_budget_are_computed_per_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    teacher = _bert()
    x = _tokens(128)
    monkeypatch.setattr(distill, "HIDDEN_CACHE_BYTES", 1024)
    record = distill.apply(
        teacher,
        _pass(layers=[0, 3], loss="mse", epochs=1, hidden=1.0),
        PassContext(seed=0, index=0, train_data=_data(x), output="last_hidden_state"),
    )
    assert record.details["hidden"]["cached"] is False
    assert record.details["training"]["steps"] == 2


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ({"layers": [0, 0, 3]}, "each block once, in increasing order"),
        ({"layers": [3, 0]}, "each block once, in increasing order"),
        ({"layers": [-1, 2]}, "start at 0"),
        ({"layers": []}, "at least one block"),
        ({"layers": [0, 1], "student_factory": "a.b:c"}, "exactly one of"),
        ({"student_factory": "a.b:c", "hidden": 1.0}, "needs a student derived by layers"),
        ({"layers": [0, 1], "include": ["re:.*intermediate"]}, "choose the modules width narrows"),
        ({"student_factory": "a.b:c", "exclude": ["pooler"]}, "give width or remove them"),
    ],
)
def test_bad_layers_are_config_errors(raw: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match) as e:
        _pass(**raw)
    assert "\n" not in e.value.message


@pytest.mark.parametrize(
    ("model", "layers", "match"),
    [
        (_bert, [0, 4], r"passes\[0\]\.layers holds 4, but encoder\.layer has 4 blocks"),
        (_bert, [0, 1, 2, 3], "keeps all 4 blocks"),
        (
            lambda: nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)),
            [0],
            "no stack of repeated blocks",
        ),
        (
            lambda: nn.ModuleDict(
                {
                    "a": nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)]),
                    "b": nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)]),
                }
            ),
            [0],
            r"several stacks of blocks of the same depth: a \(2 Linear\), b \(2 Linear\)",
        ),
    ],
)
def test_a_model_without_the_blocks_asked_for_is_a_config_error(
    model: Any, layers: list[int], match: str
) -> None:
    with pytest.raises(ConfigError, match=match) as e:
        distill.derive_student(model(), None, "passes[0]", None, tuple(layers))
    assert e.value.path == "passes[0].layers" and "\n" not in e.value.message


def test_layers_and_width_together_keep_blocks_then_narrow_them() -> None:
    teacher = _bert()
    x = _tokens(64)
    record = distill.apply(
        teacher,
        _pass(layers=[0, 3], width=0.5, loss="cosine", epochs=1, hidden=1.0),
        PassContext(seed=0, index=0, train_data=_data(x), output="last_hidden_state"),
    )
    student = record.replacement
    assert student is not None and len(student.encoder.layer) == 2
    assert student.encoder.layer[0].intermediate.dense.out_features == 32  # half of 64
    assert record.details["hidden"]["teacher_blocks"] == [2, 3]
    # width alone: every block kept, each matched to the same teacher block
    alone = distill.apply(
        teacher,
        _pass(width=0.5, loss="mse", epochs=1, hidden=1.0),
        PassContext(seed=0, index=0, train_data=_data(x), output="last_hidden_state"),
    )
    assert alone.details["hidden"]["teacher_blocks"] == [0, 1, 2, 3]


def test_include_chooses_what_width_narrows_and_the_shipped_file_rebuilds_it(
    tmp_path: Path,
) -> None:
    teacher = _bert()
    x = _tokens(64)
    # only the FFNs: every attention head and the hidden size are kept
    record = distill.apply(
        teacher,
        _pass(
            layers=[0, 3], width=0.5, include=[r"re:.*intermediate\.dense"], loss="cosine", epochs=1
        ),
        PassContext(seed=0, index=0, train_data=_data(x), output="last_hidden_state"),
    )
    student = record.replacement
    assert student is not None
    for block in student.encoder.layer:
        assert block.intermediate.dense.out_features == 32  # half of 64
        assert block.attention.self.query.out_features == 32  # all of it: 2 heads kept
        assert block.attention.self.num_attention_heads == 2
    assert set(record.details["narrowed"]["layers"]) == {
        "encoder.layer.0.intermediate.dense",
        "encoder.layer.1.intermediate.dense",
    }
    pack(student, tmp_path / "s.ccz", example=_tokens(4))
    test = _tokens(8, seed=5)
    with torch.no_grad():
        want = student(**test).last_hidden_state
        got = load_student(tmp_path / "s.ccz")(**test)  # no factory
    got = got["last_hidden_state"] if not isinstance(got, torch.Tensor) else got
    assert torch.allclose(got, want, atol=1e-5)
    # an include naming no layer width can narrow is the include's error
    with pytest.raises(ConfigError) as e:
        distill.derive_student(teacher, 0.5, "passes[0]", x, None, ("nothing.here",))
    assert e.value.path == "passes[0].include"


class _Stack(nn.Module):
    """Linear blocks without a residual: a width cut narrows what each block outputs.
    ``returns``: what a block gives back; ``skip``: run only the first and last block."""

    def __init__(self, returns: str = "tensor", skip: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Linear(4, 16)
        self.blocks = nn.ModuleList(_Block(returns) for _ in range(3))
        self.head = nn.Linear(16, 2)
        self.skip = skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        for i, block in enumerate(self.blocks):
            if not (self.skip and i == 1):
                out = block(h)
                h = out["h"] if isinstance(out, dict) else out
        return self.head(h)


class _Block(nn.Module):
    def __init__(self, returns: str) -> None:
        super().__init__()
        self.fc, self.returns = nn.Linear(16, 16), returns

    def forward(self, h: torch.Tensor) -> Any:
        out = torch.relu(self.fc(h))
        return {"h": out} if self.returns == "dict" else out


@pytest.mark.parametrize(
    ("teacher", "raw", "match"),
    [
        # the cut narrows the blocks' outputs: nothing to compare them with
        (_Stack(), {"width": 0.5}, r"student block 0 outputs shape \(8, 8\), teacher block 0 "),
        (_Stack("dict"), {"layers": [0, 2]}, "a block returns dict, not a tensor"),
        (_Stack(skip=True), {"layers": [0, 2]}, "block 1 of the stack did not run"),
    ],
    ids=["narrowed", "dict-output", "block-skipped"],
)
def test_hidden_on_blocks_it_cannot_compare_is_one_config_error(
    teacher: nn.Module, raw: dict[str, Any], match: str
) -> None:
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(2))

    def data() -> Any:
        yield x, None

    with pytest.raises(ConfigError, match=match) as e:
        distill.apply(
            teacher,
            _pass(loss="mse", epochs=1, hidden=1.0, **raw),
            PassContext(seed=0, index=0, train_data=data),
        )
    assert "\n" not in e.value.message and "hidden" in (e.value.path or "") + (e.value.hint or "")
