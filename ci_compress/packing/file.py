"""The packed student format (``.ccz``): what ships, and what the gate evaluates.

Layout of the file::

    b"CCZPACK2" | manifest length (uint32, little-endian) | zstd(manifest JSON) | payload

The payload is a zstandard frame holding one safetensors blob (no pickle anywhere).
Each tensor is encoded by :mod:`ci_compress.packing.encoding` (bit-packed small
integers, palettes, bitmask or index-delta sparse positions, Huffman or fixed-width
symbol streams: whichever measures smaller). The manifest holds the format version,
the architecture spec (module types and constructor arguments, see
:mod:`ci_compress.packing.codecs`), each tensor's encoding, the sha256 of the payload,
the pass history and the library versions. The loader checks the magic, the lengths
and the checksum before it decompresses anything, bounds decompression by the size the
manifest announces, and checks every stream while decoding. Version 1 files (plain
JSON manifest, ``CCZPACK1``) are still read.

The checksum catches corruption and truncation; it is not a signature (whoever can
rewrite the file can rewrite the manifest). Pin the shipped file's sha256 (report.json
records it) where provenance matters.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ci_compress.errors import ArtifactError
from ci_compress.files import atomic_write_bytes
from ci_compress.layers.inspect import learned_tensors
from ci_compress.packing import codecs, encoding
from ci_compress.packing.encoding import Entropy
from ci_compress.versions import versions

if TYPE_CHECKING:
    import torch
    from torch import nn

MAGIC = b"CCZPACK2"  # version 2: zstd-compressed manifest
MAGIC_V1 = b"CCZPACK1"  # version 1: plain JSON manifest
MAGICS = (MAGIC_V1, MAGIC)
# Manifest entry keys that describe sizes only; kept in PackInfo, not written to the file.
_INFO_ONLY = ("stored_bytes", "compressed_bytes", "streams")
FORMAT = "ci-compress-packed"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
# A payload may expand at most this much (and an announced size beyond it is refused
# before anything is decompressed): a guard against decompression bombs.
MAX_EXPANSION = 10_000
MAX_RAW_FLOOR = 256 * 1024 * 1024


@dataclass
class PackInfo:
    path: Path
    file_bytes: int
    payload_bytes: int
    raw_bytes: int
    sha256: str  # of the whole file
    tensors: dict[str, dict[str, Any]] = field(default_factory=dict)
    manifest_bytes: int = 0
    entropy: str = "auto"  # which payload variant shipped (auto, none, huffman)
    payload_candidates: dict[str, int] = field(default_factory=dict)  # variant -> payload bytes


# ---------------------------------------------------------------- describe / rebuild


def describe(module: nn.Module, tensors: dict[str, torch.Tensor], path: str = "") -> dict[str, Any]:
    """Architecture spec of ``module``; fills ``tensors`` with its own tensors by full name."""
    codec = codecs.codec_for(module)
    spec: dict[str, Any]
    if codec is None:
        cls = type(module)
        spec = {"type": "custom", "class": f"{cls.__module__}.{cls.__qualname__}"}
    else:
        spec = {"type": codec.name}
        args = codecs.module_args(codec, module)
        if args:
            spec["args"] = args
    own = codecs.own_tensors(codec, module)
    if own:
        spec["tensors"] = sorted(own)
        for name, t in own.items():
            tensors[f"{path}.{name}" if path else name] = t
    if codec is None or codec.container:
        children = [
            [n, describe(c, tensors, f"{path}.{n}" if path else n)]
            for n, c in module.named_children()
        ]
        if children:
            spec["children"] = children
    return spec


def rebuild(
    spec: dict[str, Any],
    tensors: dict[str, torch.Tensor],
    factory_model: nn.Module | None,
    path: str = "",
) -> nn.Module:
    """Rebuild a module from its spec; custom modules come from the trusted factory."""
    own = {n: tensors[f"{path}.{n}" if path else n] for n in spec.get("tensors", [])}
    kind = spec.get("type")
    where = path or "<root>"
    if kind == "custom":
        if factory_model is None:
            raise ArtifactError(
                f"the packed model has a custom module {spec.get('class')} at {where}",
                hint="give model.factory (package.module:function) so ci-compress can rebuild it",
            )
        try:
            module = factory_model.get_submodule(path) if path else factory_model
        except AttributeError:
            raise ArtifactError(
                f"the factory's model has no module at {where} (packed file expects {spec.get('class')})"
            ) from None
        cls = type(module)
        if f"{cls.__module__}.{cls.__qualname__}" != spec.get("class"):
            raise ArtifactError(
                f"module {where} is {cls.__qualname__} in the factory's model but {spec.get('class')} in the packed file"
            )
        import torch

        with torch.no_grad():
            for n, t in own.items():
                setattr(
                    module,
                    n,
                    torch.nn.Parameter(t.clone(), requires_grad=False)
                    if n in module._parameters
                    else t.clone(),
                )
    else:
        codec = codecs.CODECS.get(str(kind))
        if codec is None:
            raise ArtifactError(
                f"the packed model uses module type {kind!r} at {where}, which this ci-compress does not know",
                hint="upgrade ci-compress to the version that wrote the file",
            )
        try:
            module = (
                codecs.build_module(codec, spec.get("args", {}), own)
                if not codec.container
                else codec.cls()()
            )
        except (TypeError, ValueError, KeyError, RuntimeError) as e:
            raise ArtifactError(f"cannot rebuild {kind} at {where}: {e}") from None
    for name, child_spec in spec.get("children", []):
        child_path = f"{path}.{name}" if path else name
        module.add_module(name, rebuild(child_spec, tensors, factory_model, child_path))
    return module


# ---------------------------------------------------------------- file I/O


# The versions a packed file records (its manifest's "versions"; the set is part of the format).
LIBRARIES = ("ci_compress", "torch", "numpy", "safetensors", "zstandard")


def library_versions() -> dict[str, str]:
    return {k: v or "unknown" for k, v in versions(LIBRARIES).items()}


def pack(
    model: nn.Module,
    path: Path,
    *,
    passes: list[dict[str, Any]] | None = None,
    factory: str | None = None,
    level: int = 19,
    entropy: Entropy = "auto",
) -> PackInfo:
    """Write ``model`` to ``path`` in the packed format (atomically) and describe it.

    ``entropy`` is ``auto`` (per symbol stream, Huffman or fixed width, whichever
    measures smaller), ``none`` (never Huffman) or ``huffman`` (Huffman wherever it
    applies); the last two exist to measure the choice.
    """
    import zstandard
    from safetensors.torch import save as st_save

    tensors: dict[str, torch.Tensor] = {}
    arch = describe(model, tensors)
    # Per-stream choices are measured on each stream alone, but zstd shares its tables
    # across neighbouring streams in the payload; so with ``auto`` the whole payload is
    # also built with Huffman nowhere and everywhere, and the smallest one ships.
    tried: dict[str, tuple[int, dict[str, dict[str, Any]], bytes, int]] = {}
    for mode in ("auto", "none", "huffman") if entropy == "auto" else (entropy,):
        stored: dict[str, torch.Tensor] = {}
        entries = {
            name: encoding.encode(name, t, stored, level=level, entropy=mode)
            for name, t in sorted(tensors.items())
        }
        raw = st_save(stored)
        payload = zstandard.ZstdCompressor(level=level, write_checksum=True).compress(raw)
        tried[mode] = (len(payload), entries, payload, len(raw))
    chosen = min(tried, key=lambda m: tried[m][0])
    _, entries, payload, raw_len = tried[chosen]
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": arch,
        "factory": factory,
        "tensors": entries,
        "payload": {
            "codec": "zstd",
            "container": "safetensors",
            "sha256": hashlib.sha256(payload).hexdigest(),
            "bytes": len(payload),
            "raw_bytes": raw_len,
            "entropy": chosen,
        },
        "passes": passes or [],
        "versions": library_versions(),
    }
    manifest["tensors"] = {
        n: {k: v for k, v in e.items() if k not in _INFO_ONLY} for n, e in entries.items()
    }
    text = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    head = zstandard.ZstdCompressor(level=level, write_checksum=True).compress(text)
    blob = MAGIC + struct.pack("<I", len(head)) + head + payload
    atomic_write_bytes(path, blob)
    return PackInfo(
        path=path,
        file_bytes=len(blob),
        payload_bytes=len(payload),
        raw_bytes=raw_len,
        sha256=hashlib.sha256(blob).hexdigest(),
        tensors=entries,
        manifest_bytes=len(head),
        entropy=chosen,
        payload_candidates={m: v[0] for m, v in tried.items()},
    )


def read_manifest(path: Path) -> tuple[dict[str, Any], bytes]:
    """The manifest and the (checked) payload of a packed file."""
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        raise ArtifactError(f"packed model not found: {path}") from None
    except OSError as e:
        raise ArtifactError(f"cannot read packed model {path}: {e.strerror}") from None
    if not blob.startswith(MAGICS):
        if any(m.startswith(blob) for m in MAGICS):
            raise ArtifactError(f"{path} is truncated (it ends inside the magic bytes)")
        raise ArtifactError(f"{path} is not a ci-compress packed file (bad magic bytes)")
    if len(blob) < len(MAGIC) + 4:
        raise ArtifactError(f"{path} is truncated (no manifest length)")
    (n,) = struct.unpack("<I", blob[len(MAGIC) : len(MAGIC) + 4])
    start = len(MAGIC) + 4
    if n > MAX_MANIFEST_BYTES or start + n > len(blob):
        raise ArtifactError(
            f"{path} is truncated or corrupt (manifest of {n} bytes does not fit in {len(blob)} bytes)"
        )
    head = blob[start : start + n]
    if blob.startswith(MAGIC):
        import zstandard

        try:
            with zstandard.ZstdDecompressor().stream_reader(head) as reader:
                head = reader.read(MAX_MANIFEST_BYTES + 1)
        except zstandard.ZstdError as e:
            raise ArtifactError(
                f"{path}: cannot decompress the manifest ({e}); the file is corrupt"
            ) from None
        if len(head) > MAX_MANIFEST_BYTES:
            raise ArtifactError(f"{path}: the manifest expands beyond {MAX_MANIFEST_BYTES} bytes")
    try:
        manifest = json.loads(head)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(
            f"{path}: the manifest is not valid JSON ({e}); the file is corrupt"
        ) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"{path}: not a ci-compress packed manifest")
    if manifest.get("format_version") not in READABLE_VERSIONS:
        raise ArtifactError(
            f"{path}: packed format version {manifest.get('format_version')!r}, this ci-compress reads {', '.join(map(str, READABLE_VERSIONS))}",
            hint="use the ci-compress version that wrote the file",
        )
    payload = blob[start + n :]
    info = manifest.get("payload")
    if not isinstance(info, dict) or not isinstance(manifest.get("tensors"), dict):
        raise ArtifactError(
            f"{path}: the manifest has no payload or tensors section; the file is corrupt"
        )
    if len(payload) != info.get("bytes"):
        raise ArtifactError(
            f"{path} is truncated: payload has {len(payload)} bytes, the manifest says {info.get('bytes')}"
        )
    if hashlib.sha256(payload).hexdigest() != info.get("sha256"):
        raise ArtifactError(
            f"{path}: payload sha256 does not match the manifest; the file is corrupt or was tampered with"
        )
    return manifest, payload


def load_packed(
    path: Path, *, factory: Callable[[], nn.Module] | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a runnable model from a packed file, verifying it first."""
    from safetensors import SafetensorError
    from safetensors.torch import load as st_load

    manifest, payload = read_manifest(path)
    raw = _decompress(path, payload, manifest["payload"].get("raw_bytes"))
    try:
        stored = st_load(raw)
    except (SafetensorError, ValueError) as e:
        raise ArtifactError(f"{path}: the tensor payload is unreadable ({e})") from None
    try:
        tensors = {
            name: encoding.decode(name, entry, stored)
            for name, entry in manifest["tensors"].items()
        }
    except KeyError as e:
        raise ArtifactError(f"{path}: tensor stream {e} is missing from the payload") from None
    except ArtifactError as e:
        raise ArtifactError(f"{path}: {e.message}", hint=e.hint) from None
    factory_model = factory() if factory is not None else None
    model = rebuild(manifest["architecture"], tensors, factory_model)
    model.eval()
    return model, manifest


def _decompress(path: Path, payload: bytes, raw_bytes: Any) -> bytes:
    """Decompress the payload, never producing more than the manifest announces."""
    import zstandard

    if not isinstance(raw_bytes, int) or isinstance(raw_bytes, bool) or raw_bytes < 0:
        raise ArtifactError(f"{path}: the manifest's payload.raw_bytes is not a byte count")
    if raw_bytes > max(MAX_RAW_FLOOR, MAX_EXPANSION * len(payload)):
        raise ArtifactError(
            f"{path}: the payload claims to expand from {len(payload)} to {raw_bytes} bytes; "
            "refused as a likely decompression bomb"
        )
    chunks: list[bytes] = []
    got = 0
    try:
        with zstandard.ZstdDecompressor().stream_reader(payload) as reader:
            while got <= raw_bytes:
                chunk = reader.read(min(1 << 20, raw_bytes + 1 - got))
                if not chunk:
                    break
                chunks.append(chunk)
                got += len(chunk)
    except zstandard.ZstdError as e:
        raise ArtifactError(
            f"{path}: cannot decompress the payload ({e}); the file is corrupt"
        ) from None
    if got != raw_bytes:
        raise ArtifactError(
            f"{path}: payload decompressed to {f'more than {raw_bytes}' if got > raw_bytes else got} bytes, "
            f"the manifest says {raw_bytes}; the file is corrupt or was tampered with"
        )
    return b"".join(chunks)


def size_breakdown(model: nn.Module, info: PackInfo) -> dict[str, Any]:
    """Where the shipped bytes go: totals from the real file, and one row per module.

    Per module: parameters and nonzero parameters (quantized weights counted as their
    float values), the encodings of its tensors, ``stored_bytes`` (its streams before
    zstd) and ``compressed_bytes``: its streams zstd-compressed **alone**, an estimate
    (the payload is compressed as a whole, so rows need not add up to the payload).
    """
    rows: list[dict[str, Any]] = []
    for mod_name, module in model.named_modules():
        prefix = f"{mod_name}." if mod_name else ""
        own = {
            n[len(prefix) :]: e
            for n, e in info.tensors.items()
            if n.startswith(prefix) and "." not in n[len(prefix) :]
        }
        if not own:
            continue
        params = nonzero = 0
        for _, t in learned_tensors(module):
            params += t.numel()
            nonzero += int((t != 0).sum())
        rows.append(
            {
                "module": mod_name or "<root>",
                "type": type(module).__name__,
                "parameters": params,
                "nonzero": nonzero,
                "encodings": {n: _describe_entry(e) for n, e in sorted(own.items())},
                "stored_bytes": sum(int(e.get("stored_bytes", 0)) for e in own.values()),
                "compressed_bytes": sum(int(e.get("compressed_bytes", 0)) for e in own.values()),
            }
        )
    return {
        "file_bytes": info.file_bytes,
        "header_bytes": len(MAGIC) + 4 + info.manifest_bytes,
        "payload_bytes": info.payload_bytes,
        "payload_raw_bytes": info.raw_bytes,
        "entropy": info.entropy,
        "payload_candidates": info.payload_candidates,
        "layers": rows,
        "note": "layers[].compressed_bytes: each module's tensors compressed alone (an estimate); "
        "file_bytes is the real shipped file",
    }


def _describe_entry(e: dict[str, Any]) -> str:
    """A short human form of a tensor's encoding, e.g. ``sparse(delta4+huffman) bitpack4``."""

    def stream(m: dict[str, Any]) -> str:
        bits = m.get("bits")
        return f"{m.get('codec')}{bits if m.get('codec') != 'raw' and bits else ''}" + (
            "+huffman" if m.get("entropy") == "huffman" else ""
        )

    values = e.get("values", {})
    if e.get("encoding") == "sparse":
        return f"sparse({stream(e.get('positions', {}))}) {stream(values)} {e.get('dtype')}"
    return f"dense {stream(values)} {e.get('dtype')}"
