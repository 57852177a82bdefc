"""Embedding tables: quantized and clustered, packed compactly, reloaded equal; the
refusals and the tied-weight warning; one error listing every module a pass cannot
handle; a pass that changes nothing is an error."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from ci_compress.config import parse_config
from ci_compress.errors import ConfigError
from ci_compress.layers import modules
from ci_compress.packing.file import load_packed, pack
from ci_compress.passes.base import PassContext
from ci_compress.passes.registry import PASSES
from ci_compress.passes.run import apply_pass, run_pass
from tests.helpers.configs import base_config


def _passes(*passes: dict) -> list:
    return list(parse_config(base_config(passes=list(passes))).passes)


def _apply(model: nn.Module, *passes: dict) -> list:
    return [
        run_pass(PASSES[p.type], model, p, PassContext(seed=0, index=i))
        for i, p in enumerate(_passes(*passes))
    ]


class Bag(nn.Module):
    """A token table, averaged, then a Linear: a text classifier's smallest shape."""

    def __init__(self, vocab: int = 2000, dim: int = 64, *, max_norm: float | None = None):
        super().__init__()
        self.table = nn.Embedding(vocab, dim, padding_idx=0, max_norm=max_norm)
        self.head = nn.Linear(dim, 4)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.table(ids).mean(1))


def _seq(vocab: int = 2000, dim: int = 64) -> nn.Sequential:
    """A packable model (Sequential of known layers) around a table."""
    torch.manual_seed(0)
    table = nn.Embedding(vocab, dim, padding_idx=0)
    return nn.Sequential(table, nn.Flatten(), nn.Linear(dim * 8, 4))


def _ids(vocab: int = 2000) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (16, 8), generator=g)
    ids[:, -2:] = 0  # padding
    return ids


@pytest.mark.parametrize(
    ("scheme", "cls"),
    [
        ("int8-weight-only", modules.Int8WeightOnlyEmbedding),
        ("int8-dynamic", modules.Int8WeightOnlyEmbedding),
        ("fp16", modules.LowPrecisionEmbedding),
    ],
)
def test_quantized_table_round_trips_through_the_packed_file(
    tmp_path: Path, scheme: str, cls: type
) -> None:
    model = _seq().eval()
    teacher = _seq().eval()
    ids = _ids()
    (record,) = _apply(model, {"type": "quantize", "scheme": scheme, "include": ["0"]})
    assert type(model[0]) is cls and record.modules == ["0"]
    assert model[0].padding_idx == 0
    assert torch.equal(model[0](ids)[:, -2:], torch.zeros(16, 2, 64))  # padding rows stay zero
    out = model(ids)
    rows, ref = model[0](ids), teacher[0](ids)
    step = ref.abs().amax(-1, keepdim=True) / 127  # int8's step, row by row
    assert bool(((rows - ref).abs() <= step / 2 + 1e-6).all())  # rounding error at most
    assert not torch.equal(rows, ref)
    pack(model, tmp_path / "s.ccz")
    shipped, _ = load_packed(tmp_path / "s.ccz")  # no factory: the table has a codec
    assert type(shipped[0]) is cls and shipped[0].padding_idx == 0
    assert torch.equal(shipped(ids), out)


def test_int8_table_is_about_four_times_smaller_in_the_packed_file(tmp_path: Path) -> None:
    torch.manual_seed(0)
    table = nn.Embedding(4000, 64)
    fp32 = pack(nn.Sequential(table), tmp_path / "f.ccz").file_bytes
    int8 = pack(
        nn.Sequential(modules.Int8WeightOnlyEmbedding.from_float(table)), tmp_path / "q.ccz"
    ).file_bytes
    raw = 4000 * 64 * 4
    assert fp32 > raw * 0.8  # float32 noise barely compresses (measured 0.86)
    assert int8 <= raw / 3.9  # one byte a weight, plus a float32 scale a row
    assert fp32 / int8 >= 3.3, (fp32, int8)  # measured 3.42


def test_lookup_decodes_only_the_rows_it_gathers() -> None:
    torch.manual_seed(0)
    q = modules.Int8WeightOnlyEmbedding.from_float(nn.Embedding(50, 8))
    ids = torch.tensor([[3, 7], [7, 49]])
    assert torch.equal(q(ids), q.decoded_weight()[ids])
    c = modules.ClusteredEmbedding(50, 8, bits=3)
    c.indices.copy_(torch.randint(0, 8, (50, 8), dtype=torch.uint8))
    c.codebook.data.copy_(torch.arange(8.0))
    assert torch.equal(c(ids), c.decoded_weight()[ids])


def test_cluster_shares_table_weights_and_reloads_equal(tmp_path: Path) -> None:
    model = _seq().eval()
    ids = _ids()
    (record,) = _apply(model, {"type": "cluster", "bits": 4})
    assert record.modules == ["0", "2"]
    assert type(model[0]) is modules.ClusteredEmbedding
    assert record.details["distinct_values"]["0"] <= 16
    assert bool((model[0].decoded_weight()[0] == 0).all())  # the padding row: zero kept
    pack(model, tmp_path / "c.ccz")
    shipped, _ = load_packed(tmp_path / "c.ccz")
    assert torch.equal(shipped(ids), model(ids))


def test_a_compressed_table_inside_a_custom_parent_reloads_through_the_factory(
    tmp_path: Path,
) -> None:
    torch.manual_seed(0)
    model = Bag().eval()
    ids = _ids()
    _apply(model, {"type": "quantize", "scheme": "int8-weight-only"})
    assert type(model.table) is modules.Int8WeightOnlyEmbedding
    pack(model, tmp_path / "b.ccz")
    shipped, _ = load_packed(tmp_path / "b.ccz", factory=Bag)  # Bag's own table is float
    assert type(shipped.table) is modules.Int8WeightOnlyEmbedding
    assert torch.equal(shipped(ids), model(ids))


def test_max_norm_table_named_explicitly_is_refused_with_its_name() -> None:
    model = Bag(max_norm=1.0)
    with pytest.raises(
        ConfigError, match=r"passes\[0\]\.include: table \(Embedding\) has max_norm"
    ):
        _apply(model, {"type": "quantize", "scheme": "int8-weight-only", "include": ["table"]})
    # under the default include '*' it is left float, the rest is quantized
    (record,) = _apply(model, {"type": "quantize", "scheme": "int8-weight-only"})
    assert record.modules == ["head"] and type(model.table) is nn.Embedding


def test_one_error_lists_every_module_the_pass_cannot_handle() -> None:
    class Three(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Embedding(10, 4, max_norm=1.0)
            self.b = nn.Embedding(10, 4, max_norm=2.0)
            self.norm = nn.LayerNorm(4)
            self.head = nn.Linear(4, 2)

    with pytest.raises(ConfigError) as e:
        _apply(Three(), {"type": "cluster", "include": ["a", "b", "norm", "head"]})
    msg = str(e.value)
    assert "'norm' matches no Linear/Conv2d/Embedding module (it matches norm (LayerNorm)" in msg
    assert "a (Embedding) has max_norm" in msg and "b (Embedding) has max_norm" in msg
    assert "head" in e.value.hint  # what it can touch


def test_an_embedding_subclass_with_its_own_forward_is_not_replaced() -> None:
    class Scaled(nn.Embedding):
        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return super().forward(ids) * 8.0

    model = nn.Sequential(Scaled(10, 4), nn.Linear(4, 2))
    with pytest.raises(ConfigError, match=r"0 \(Scaled\) subclasses nn.Embedding with its own"):
        _apply(model, {"type": "quantize", "scheme": "int8-weight-only", "include": ["0", "1"]})
    (record,) = _apply(model, {"type": "cluster", "bits": 4})
    assert record.modules == ["1"] and type(model[0]) is Scaled


def test_tied_weights_are_untied_with_a_warning() -> None:
    class TiedLM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.wte = nn.Embedding(100, 16)
            self.lm_head = nn.Linear(16, 100, bias=False)
            self.lm_head.weight = self.wte.weight

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.lm_head(self.wte(ids))

    model = TiedLM()
    (record,) = _apply(
        model, {"type": "quantize", "scheme": "int8-weight-only", "include": ["wte"]}
    )
    (warning,) = record.warnings
    assert "lm_head and wte shared one weight tensor" in warning
    assert "wte only, lm_head keeps the float copy" in warning
    assert record.details["untied"] == {"wte": ["lm_head"]}
    model = TiedLM()
    (record,) = _apply(model, {"type": "cluster", "bits": 4})
    assert "clustered each separately" in record.warnings[0]


def test_a_pass_that_changes_nothing_is_an_error_naming_it() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    (p,) = _passes({"type": "prune", "threshold": 1e-12})  # no weight is that small
    with pytest.raises(ConfigError, match=r"passes\[0\]: prune changed nothing") as e:
        apply_pass(PASSES[p.type], model, p, PassContext(seed=0, index=0))
    assert "threshold" in (e.value.hint or "")
    (q,) = _passes({"type": "quantize", "scheme": "int8-dynamic"})
    conv = nn.Sequential(nn.Conv2d(1, 2, 3))  # int8-dynamic quantizes no Conv2d
    with pytest.raises(ConfigError, match=r"passes\[0\]: quantize changed nothing") as e:
        apply_pass(PASSES[q.type], conv, q, PassContext(seed=0, index=0))
    assert "selects no module" in (e.value.hint or "")
    # explain may allow a no-op; a pass that changes the model goes through
    apply_pass(PASSES[p.type], model, p, PassContext(seed=0, index=0), allow_noop=True)
    _, record = apply_pass(PASSES[q.type], model, q, PassContext(seed=0, index=0))
    assert record.modules == ["0", "2"]
