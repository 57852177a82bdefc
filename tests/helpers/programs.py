"""Packed files that ship a graph, and hostile edits of that graph (unit and fuzz tests)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import torch
import zstandard
from torch import nn

from ci_compress.packing.file import _dumps, assemble, read_manifest


class DigitsNet(nn.Module):
    """A custom class no codec knows, for the digits holdout (64 features, 10 classes)."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(64, 32)
        self.out = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.inp(x))
        return self.out(h + h.mean(-1, keepdim=True))


def rewrite_graph(src: Path, dst: Path, edit: Callable[[bytes], bytes]) -> None:
    """A copy of ``src`` whose graph stream is ``edit(graph)``, sizes and sha256 made to
    fit, so the loader's checks of the graph itself are what is tested."""
    manifest, payload = read_manifest(src)
    raw = zstandard.ZstdDecompressor().decompress(
        payload, max_output_size=manifest["payload"]["raw_bytes"]
    )
    n = manifest["program"]["bytes"]
    graph = edit(raw[len(raw) - n :])
    raw = raw[: len(raw) - n] + graph
    new = zstandard.ZstdCompressor().compress(raw)
    manifest["program"]["bytes"] = len(graph)
    manifest["payload"].update(
        bytes=len(new), raw_bytes=len(raw), sha256=hashlib.sha256(new).hexdigest()
    )
    dst.write_bytes(assemble(manifest, new))


def graph_of(path: Path) -> bytes:
    manifest, payload = read_manifest(path)
    raw = zstandard.ZstdDecompressor().decompress(
        payload, max_output_size=manifest["payload"]["raw_bytes"]
    )
    return raw[len(raw) - manifest["program"]["bytes"] :]


def json_edit(fn: Callable[[dict], None]) -> Callable[[bytes], bytes]:
    def edit(graph: bytes) -> bytes:
        doc = json.loads(graph)
        fn(doc)
        return _dumps(doc)

    return edit


def first_node(doc: dict) -> dict:
    return doc["graph_module"]["graph"]["nodes"][0]


def _rename_parameter(doc: dict) -> None:
    doc["graph_module"]["signature"]["input_specs"][0]["parameter"]["parameter_name"] = "no.such"


def _expr(doc: dict) -> None:
    doc["range_constraints"] = {"__import__('os').system('touch pwned')": {"min_val": 2}}


def _defaultdict(doc: dict) -> None:
    signature = doc["graph_module"]["module_call_graph"][0]["signature"]
    spec = json.loads(signature["out_spec"])
    spec[1]["type"] = "collections.defaultdict"
    signature["out_spec"] = json.dumps(spec)


# edit, and what the one-line error says
HOSTILE: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "truncated": (lambda g: g[: len(g) // 2], "the program is not valid JSON"),
    "tensor-not-stored": (json_edit(_rename_parameter), "takes tensor no.such"),
    "unknown-op": (
        json_edit(lambda d: first_node(d).update(target="torch.ops.aten.no_such_op.default")),
        "the program calls 'torch.ops.aten.no_such_op.default'",
    ),
    "python-function": (
        json_edit(lambda d: first_node(d).update(target="torch.os.system")),
        "the program calls 'torch.os.system'",
    ),
    "guards-code": (
        json_edit(lambda d: d.update(guards_code=["__import__('os').system('touch pwned')"])),
        "guards code",
    ),
    "shape-expression": (json_edit(_expr), "shape expression ci-compress refuses"),
    "not-json-object": (lambda g: b"[1, 2]", "no graph_module"),
    "node-name": (
        json_edit(lambda d: first_node(d).update(name="x); __import__('os').system('touch pwned'")),
        "the program has a name ci-compress refuses",
    ),
    "defaultdict-output": (
        json_edit(_defaultdict),
        "built of a collections.defaultdict",
    ),
}
