"""Packed format v3: files of earlier versions still load, the rANS model cannot drift,
and a file cannot make the loader allocate what its payload does not justify, nor load
a layer whose tensors it lacks."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ci_compress.demo.models import digits_cnn, digits_mlp
from ci_compress.errors import ArtifactError
from ci_compress.packing import encoding
from ci_compress.packing.file import (
    _MANIFEST_DICT,
    _MANIFEST_DICT_SHA256,
    MAGIC,
    assemble,
    load_packed,
    pack,
    read_manifest,
)

DATA = Path(__file__).parent / "data"


@pytest.mark.parametrize(
    ("name", "factory"), [("mlp_int8", digits_mlp), ("cnn_cluster", digits_cnn)]
)
def test_version_2_files_still_load_and_compute_the_same(name: str, factory: object) -> None:
    """Written by the v2 packer (pruned + int8-dynamic MLP, pruned + clustered CNN)."""
    expected = load_file(str(DATA / "v2_expected.safetensors"))
    path = DATA / f"v2_{name}.ccz"
    model, manifest = load_packed(path)
    assert manifest["format_version"] == 2
    with torch.inference_mode():
        out = model(expected["x"])
    # Bit for bit on the CPU that wrote the expected outputs; another CPU's convolution
    # kernels (AVX-512 against AVX2) sum in another order: 1.5e-8 on outputs of ~0.1,
    # where one wrongly decoded weight moves them by 1e-3 or more.
    torch.testing.assert_close(out, expected[name], rtol=1e-5, atol=1e-6)
    assert torch.equal(out.argmax(1), expected[name].argmax(1))


def test_the_manifest_dictionary_is_frozen() -> None:
    # Part of format version 3: editing it makes every v3 file unreadable.
    assert hashlib.sha256(_MANIFEST_DICT).hexdigest() == _MANIFEST_DICT_SHA256


def test_a_stored_rans_stream_still_decodes() -> None:
    """constriction rebuilds its model from our frequency table; a release that quantises
    it differently would break every file. Words written by constriction 0.5.0."""
    sym = np.arange(200) * 7 % 13 % 5
    words = [3411574216, 3164521153, 3693162170, 1701820262, 1867010424, 972340955,
             3258576525, 465181841, 568615111, 1017596878, 1154933807, 1382650508,
             3028835488, 1043472386, 3248274222]  # fmt: skip
    meta = {"count": 200, "alphabet": 5, "coder": "ans", "precision": 8, "table": 5, "words": 15}
    data = [b"::?'&", np.array(words, dtype="<u4").tobytes()]

    def read(n: int) -> bytes:
        out = data.pop(0)
        assert len(out) == n
        return out

    assert np.array_equal(encoding.read_symbols(meta, read, 200, np.int64), sym)
    chunks: list[object] = []
    plan = encoding.plan_symbols(np.bincount(sym, minlength=5), 200, 5, "ans")
    assert encoding.write_symbols(plan, lambda i, j: sym[i:j], chunks) == meta
    assert np.asarray(chunks[1]).tolist() == words


def _tiny_file(tmp_path: Path, tensors: dict, arch: dict) -> Path:
    manifest = {
        "format_version": 3,
        "architecture": arch,
        "factory": None,
        "tensors": tensors,
        "payload": {"bytes": 0, "raw_bytes": 0, "sha256": hashlib.sha256(b"").hexdigest()},
        "passes": [],
        "versions": {},
    }
    p = tmp_path / "tiny.ccz"
    p.write_bytes(assemble(manifest, b""))
    return p


def test_a_tiny_file_cannot_ask_for_a_gigabyte(tmp_path: Path) -> None:
    # issue 16: a 679-byte file allocated 1 GB; an all-fill sparse tensor needs no stream
    entry = {
        "dtype": "float32",
        "shape": [1 << 28],
        "layout": "sparse",
        "fill": 0,
        "positions": {"codec": "gaps", "bits": 4, "count": 0, "alphabet": 16, "coder": "bytes"},
        "values": {"codec": "raw", "count": 0},
    }
    arch = {"type": "Linear", "args": {"in_features": 1 << 14, "out_features": 1 << 14}}
    p = _tiny_file(tmp_path, {"weight": entry}, arch)
    assert p.stat().st_size < 1024
    with pytest.raises(ArtifactError, match="likely decompression bomb"):
        load_packed(p)


def test_constructor_arguments_allocate_nothing(tmp_path: Path) -> None:
    # a Linear of 2**34 weights named in the spec, with tiny stored tensors: refused on
    # shape, never allocated (modules are built on the meta device)
    weight = {"dtype": "float32", "shape": [2, 2], "layout": "dense",
              "values": {"codec": "raw", "count": 4}}  # fmt: skip
    arch = {
        "type": "Linear",
        "args": {"in_features": 1 << 17, "out_features": 1 << 17, "bias": False},
    }
    manifest_tensors = {"weight": weight}
    payload_raw = np.zeros(4, dtype=np.float32).tobytes()
    import zstandard

    payload = zstandard.ZstdCompressor().compress(payload_raw)
    manifest = {
        "format_version": 3,
        "architecture": arch,
        "tensors": manifest_tensors,
        "payload": {
            "bytes": len(payload),
            "raw_bytes": len(payload_raw),
            "sha256": hashlib.sha256(payload).hexdigest(),
        },
    }
    p = tmp_path / "args.ccz"
    p.write_bytes(assemble(manifest, payload))
    with pytest.raises(ArtifactError, match="(?s)cannot rebuild Linear at <root>.*size mismatch"):
        load_packed(p)


def _linear(bias: bool) -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 16, bias=bias), torch.nn.ReLU())


def _rewrite_arch(path: Path, mutate) -> None:
    manifest, payload = read_manifest(path)
    mutate(manifest["architecture"])
    path.write_bytes(assemble(manifest, payload))


def test_a_layer_whose_tensor_the_file_lacks_is_refused(tmp_path: Path) -> None:
    """A manifest that omits a layer's tensor used to load its random initialisation."""
    p = tmp_path / "m.ccz"
    pack(_linear(bias=False), p)
    _rewrite_arch(p, lambda a: a["children"][0][1]["args"].update(bias=True))
    with pytest.raises(ArtifactError, match=r"cannot rebuild Linear at 0: .*lacks \['bias'\]"):
        load_packed(p)


def test_a_tensor_no_module_uses_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "m.ccz"
    pack(_linear(bias=True), p)
    _rewrite_arch(p, lambda a: a["children"].pop(0))
    with pytest.raises(ArtifactError, match=r"tensors no module uses: 0\.bias, 0\.weight"):
        load_packed(p)


def test_file_layout_magic_payload_manifest_length(tmp_path: Path) -> None:
    p = tmp_path / "m.ccz"
    info = pack(_linear(bias=True), p)
    blob = p.read_bytes()
    assert blob.startswith(MAGIC)
    (n,) = struct.unpack("<I", blob[-4:])
    assert n == info.manifest_bytes
    assert len(blob) == len(MAGIC) + info.payload_bytes + n + 4 == info.file_bytes
    assert hashlib.sha256(blob).hexdigest() == info.sha256


@pytest.mark.parametrize(
    "tensor",
    [
        torch.tensor([-0.0, float("nan"), float("inf"), 1.5, 2.5, 3.5, 4.5, 5.5] * 20),  # palette
        torch.randn(300).to(torch.bfloat16),
        torch.tensor([1.0, -2.0, 0.5]).repeat(200).to(torch.float16),  # palette
        torch.randint(-(2**30), 2**30, (500,), dtype=torch.int64),  # too wide for symbols
        torch.randint(0, 2, (700,), dtype=torch.bool),
        torch.randint(-5, 5, (40, 40), dtype=torch.int16),
        torch.randn(100, dtype=torch.complex64),  # stored as bytes
        torch.zeros(0, 5),
    ],
)
def test_odd_tensors_round_trip_bit_exactly(tensor: torch.Tensor) -> None:
    enc = encoding.encode(tensor)
    data = b"".join(bytes(memoryview(c).cast("B")) for c in enc.chunks)
    at = [0]

    def read(n: int) -> bytes:
        at[0] += n
        return data[at[0] - n : at[0]]

    back = encoding.decode("t", enc.entry, read)
    assert back.dtype == tensor.dtype and back.shape == tensor.shape
    assert at[0] == len(data) == encoding.entry_bytes("t", enc.entry)
    if tensor.is_floating_point() or tensor.is_complex():
        same = back.view(-1).view(torch.uint8).reshape(-1) == tensor.view(-1).view(
            torch.uint8
        ).reshape(-1)
        assert bool(same.all())
    else:
        assert torch.equal(back, tensor)


def test_pruned_negative_zeros_are_stored_as_zeros() -> None:
    w = torch.randn(64, 64)
    w.mul_(torch.rand(64, 64) < 0.1)  # pruning by a mask leaves -0.0 where w was negative
    enc = encoding.encode(w)
    assert enc.entry["layout"] == "sparse"
    assert enc.entry["values"]["count"] == int((w != 0).sum())
