"""The packed format: round trip, size, and refusal of corrupt files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ci_compress.artifacts.packing import FORMAT_VERSION, MAGIC, load_packed, pack
from ci_compress.config import parse_config
from ci_compress.demo.models import digits_cnn, digits_mlp
from ci_compress.errors import ArtifactError
from ci_compress.passes import PASSES
from ci_compress.passes.base import PassContext, run_pass
from tests.conftest import base_config


def _compressed(model: torch.nn.Module, passes: list[dict]) -> torch.nn.Module:
    cfg = parse_config(base_config(passes=passes))
    for i, p in enumerate(cfg.passes):
        run_pass(PASSES[p.type], model, p, PassContext(seed=0, index=i))
    return model


@pytest.mark.parametrize("factory", [digits_mlp, digits_cnn])
@pytest.mark.parametrize(
    "passes",
    [
        [],
        [{"type": "prune", "amount": 0.7}],
        [{"type": "prune", "amount": 0.5}, {"type": "quantize"}],
    ],
)
def test_reloaded_model_outputs_equal_the_in_memory_student(
    tmp_path: Path, factory, passes
) -> None:
    torch.manual_seed(0)
    model = _compressed(factory().eval(), passes)
    info = pack(model, tmp_path / "s.ccz")
    loaded, manifest = load_packed(tmp_path / "s.ccz")
    x = torch.rand(32, 64)
    with torch.inference_mode():
        assert torch.equal(model(x), loaded(x))
    assert info.file_bytes == (tmp_path / "s.ccz").stat().st_size
    assert manifest["format_version"] == FORMAT_VERSION


def test_sparse_weights_pack_smaller_than_dense(tmp_path: Path) -> None:
    torch.manual_seed(0)
    dense = digits_mlp().eval()
    sparse = _compressed(digits_mlp().eval(), [{"type": "prune", "amount": 0.8}])
    a = pack(dense, tmp_path / "d.ccz").file_bytes
    b = pack(sparse, tmp_path / "s.ccz").file_bytes
    assert b < 0.45 * a


def _packed(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    pack(digits_mlp().eval(), tmp_path / "s.ccz")
    return tmp_path / "s.ccz"


def test_truncated_file_is_refused(tmp_path: Path) -> None:
    p = _packed(tmp_path)
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(ArtifactError, match="truncated"):
        load_packed(p)


def test_tampered_payload_is_refused(tmp_path: Path) -> None:
    p = _packed(tmp_path)
    blob = bytearray(p.read_bytes())
    blob[-10] ^= 0xFF
    p.write_bytes(bytes(blob))
    with pytest.raises(ArtifactError, match="sha256 does not match"):
        load_packed(p)


def test_not_a_packed_file(tmp_path: Path) -> None:
    p = tmp_path / "x.ccz"
    p.write_bytes(b"hello world, not a model")
    with pytest.raises(ArtifactError, match="bad magic"):
        load_packed(p)
    p.write_bytes(MAGIC + b"\xff\xff\xff\x00")
    with pytest.raises(ArtifactError, match="truncated or corrupt"):
        load_packed(p)


class Custom(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Linear(64, 32)
        self.head = torch.nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.body(x)) * 2)


def test_custom_module_needs_and_uses_the_trusted_factory(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _compressed(Custom().eval(), [{"type": "quantize", "include": ["head"]}])
    pack(model, tmp_path / "c.ccz")
    with pytest.raises(ArtifactError, match=r"custom module test_packing\.Custom at <root>") as e:
        load_packed(tmp_path / "c.ccz")
    assert e.value.hint and "give model.factory" in e.value.hint
    loaded, _ = load_packed(tmp_path / "c.ccz", factory=Custom)
    x = torch.rand(8, 64)
    with torch.inference_mode():
        assert torch.equal(model(x), loaded(x))
