"""The packed format: round trip, size, and refusal of corrupt files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from ci_compress.config import parse_config
from ci_compress.demo.models import digits_cnn, digits_mlp
from ci_compress.errors import ArtifactError
from ci_compress.packing.file import FORMAT_VERSION, MAGIC, load_packed, pack
from ci_compress.passes.base import PassContext
from ci_compress.passes.registry import PASSES
from ci_compress.passes.run import run_pass
from tests.helpers.configs import base_config


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
        [{"type": "quantize"}],
        [{"type": "prune", "amount": 0.95, "scope": "layer"}, {"type": "quantize"}],
        [{"type": "prune", "threshold": 0.05}],
    ],
)
@pytest.mark.parametrize("entropy", ["auto", "none", "ans"])
def test_reloaded_model_outputs_equal_the_in_memory_student(
    tmp_path: Path, factory, passes, entropy
) -> None:
    torch.manual_seed(0)
    model = _compressed(factory().eval(), passes)
    info = pack(model, tmp_path / "s.ccz", entropy=entropy)
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
    blob[len(MAGIC) + 10] ^= 0xFF  # a payload byte (format 3 keeps the manifest at the end)
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
    with pytest.raises(
        ArtifactError, match=rf"custom module {re.escape(__name__)}\.Custom at <root>"
    ) as e:
        load_packed(tmp_path / "c.ccz")
    assert e.value.hint and "give model.factory" in e.value.hint
    loaded, _ = load_packed(tmp_path / "c.ccz", factory=Custom)
    x = torch.rand(8, 64)
    with torch.inference_mode():
        assert torch.equal(model(x), loaded(x))


# ---------------------------------------------------------------- every failure class


def _rewrite(path: Path, mutate=None, payload: bytes | None = None, fix_sha: bool = True) -> None:
    """Re-write a packed file with a changed manifest and/or payload (valid framing)."""
    import hashlib

    from ci_compress.packing.file import assemble, read_manifest

    manifest, old_payload = read_manifest(path)
    payload = old_payload if payload is None else payload
    if fix_sha:
        manifest["payload"]["sha256"] = hashlib.sha256(payload).hexdigest()
        manifest["payload"]["bytes"] = len(payload)
    if mutate:
        mutate(manifest)
    path.write_bytes(assemble(manifest, payload))


def _pruned(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = _compressed(
        digits_mlp().eval(), [{"type": "prune", "amount": 0.8}, {"type": "quantize"}]
    )
    pack(model, tmp_path / "s.ccz")
    return tmp_path / "s.ccz"


def test_truncated_header_is_refused(tmp_path: Path) -> None:
    p = _packed(tmp_path)
    blob = p.read_bytes()
    for cut, match in [
        (5, "ends inside the magic"),
        (10, "no manifest length"),
        (40, "truncated or corrupt"),
    ]:
        p.write_bytes(blob[:cut])
        with pytest.raises(ArtifactError, match=match):
            load_packed(p)


def test_broken_manifest_json_is_refused(tmp_path: Path) -> None:
    import struct

    import zstandard

    p = tmp_path / "m.ccz"
    head = zstandard.ZstdCompressor().compress(b'{"format_version": 3, oops')
    p.write_bytes(MAGIC + b"payload" + head + struct.pack("<I", len(head)))
    with pytest.raises(ArtifactError, match="manifest is not valid JSON"):
        load_packed(p)
    head = b"\x28\xb5\x2f\xfd garbage"
    p.write_bytes(MAGIC + head + struct.pack("<I", len(head)))
    with pytest.raises(ArtifactError, match="cannot decompress the manifest"):
        load_packed(p)


def test_decompression_bomb_is_refused(tmp_path: Path) -> None:
    import zstandard

    p = _packed(tmp_path)
    bomb = zstandard.ZstdCompressor(level=19).compress(b"\0" * (64 * 1024 * 1024))
    _rewrite(p, payload=bomb)  # streams as announced, then 64 MiB more
    with pytest.raises(
        ArtifactError, match="decompressed to more than the .* bytes its streams use"
    ):
        load_packed(p)
    _rewrite(p, lambda m: m["payload"].update(raw_bytes=2**40), payload=bomb)
    with pytest.raises(ArtifactError, match="likely decompression bomb"):
        load_packed(p)


def test_missing_tensor_stream_is_refused(tmp_path: Path) -> None:
    p = _pruned(tmp_path)
    _rewrite(p, lambda m: m["tensors"].__setitem__("0.extra", m["tensors"]["0.bias"]))
    with pytest.raises(
        ArtifactError, match=r"tensor streams add up to \d+ bytes, the manifest says"
    ):
        load_packed(p)


def test_shape_mismatch_is_refused(tmp_path: Path) -> None:
    p = _pruned(tmp_path)
    _rewrite(p, lambda m: m["tensors"]["0.weight_int8"].update(shape=[64, 255]))
    with pytest.raises(ArtifactError, match=r"tensor 0\.weight_int8"):
        load_packed(p)
    # same element count, wrong layout: caught when the layer is rebuilt
    _rewrite(p, lambda m: m["tensors"]["0.weight_int8"].update(shape=[64, 256]))
    with pytest.raises(ArtifactError, match=r"cannot rebuild DynamicQuantizedLinear at 0"):
        load_packed(p)
    _rewrite(p, lambda m: m["tensors"]["0.bias"].update(shape=[3]))
    with pytest.raises(ArtifactError, match=r"tensor 0\.bias.*(does not match|values)"):
        load_packed(p)


def test_unknown_encoding_is_refused(tmp_path: Path) -> None:
    p = _pruned(tmp_path)
    _rewrite(p, lambda m: m["tensors"]["0.bias"].update(layout="rle"))
    with pytest.raises(ArtifactError, match="unknown layout 'rle'") as e:
        load_packed(p)
    assert e.value.hint and "upgrade" in e.value.hint


def test_corrupt_streams_are_refused_not_crashed(tmp_path: Path) -> None:
    p = _pruned(tmp_path)
    manifest = __import__("ci_compress.packing.file", fromlist=["x"]).read_manifest(p)[0]
    sparse = [n for n, e in manifest["tensors"].items() if e["layout"] == "sparse"]
    assert sparse
    _rewrite(p, lambda m: m["tensors"][sparse[0]]["values"].update(count=7))
    with pytest.raises(ArtifactError, match="cannot decode|streams add up to"):
        load_packed(p)


def test_truncated_payload_is_refused(tmp_path: Path) -> None:
    p = _pruned(tmp_path)
    blob = p.read_bytes()
    p.write_bytes(blob[: len(MAGIC) + 5] + blob[len(MAGIC) + 6 :])  # one payload byte less
    with pytest.raises(ArtifactError, match="truncated: payload has"):
        load_packed(p)


@pytest.mark.slow
def test_cli_refuses_a_corrupted_packed_teacher_with_exit_3(workdir: Path) -> None:
    from tests.helpers.cli import run_cli
    from tests.helpers.configs import write_config

    p = _pruned(workdir)
    blob = bytearray(p.read_bytes())
    blob[len(MAGIC) + 20] ^= 0x55  # a payload byte
    (workdir / "teacher.ccz").write_bytes(bytes(blob))
    cfg = base_config(model={"path": "teacher.ccz"})
    write_config(workdir, cfg)
    r = run_cli("run", "--config", "compress.yaml", "-q", cwd=workdir)
    assert r.returncode == 3, r.stderr
    assert (
        "Error:" in r.stderr and "teacher.ccz" in r.stderr and "sha256 does not match" in r.stderr
    )
    assert "Traceback" not in r.stderr


def test_the_public_api_serves_the_shipped_student(tmp_path: Path) -> None:
    import subprocess
    import sys

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    pack(model.eval(), tmp_path / "student.ccz")
    x = torch.rand(4, 64)
    torch.save(x, tmp_path / "x.pt")
    with torch.inference_mode():
        expected = model(x)
    torch.save(expected, tmp_path / "expected.pt")
    # what serving code runs: one import, one call, no factory for standard layers
    code = (
        "import sys, torch, ci_compress\n"
        "m = ci_compress.load_student('student.ccz')\n"
        "x = torch.load('x.pt')\n"
        "with torch.inference_mode():\n"
        "    assert torch.equal(m(x), torch.load('expected.pt'))\n"
        "assert 'mlflow' not in sys.modules and not m.training\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr


def test_reading_a_manifest_reserves_no_more_than_it_needs(tmp_path: Path) -> None:
    """The manifest was read with one ``read(16 MiB + 1)``: every load asked for 16 MiB
    (tracemalloc's peak) to hold a few hundred bytes."""
    import tracemalloc

    from ci_compress.packing.file import read_manifest

    p = tmp_path / "s.ccz"
    pack(digits_mlp().eval(), p)
    read_manifest(p)  # warm-up: imports and the dictionary
    tracemalloc.start()
    try:
        read_manifest(p)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20, peak


def test_a_manifest_that_expands_past_the_limit_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ci_compress.packing import file

    p = tmp_path / "s.ccz"
    pack(digits_mlp().eval(), p)
    monkeypatch.setattr(file, "MAX_MANIFEST_BYTES", 300)  # the manifest is ~2 kB of JSON
    with pytest.raises(ArtifactError, match="the manifest expands beyond 300 bytes"):
        load_packed(p)
