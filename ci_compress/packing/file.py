"""The packed student format (``.ccz``): what ships, and what the gate evaluates.

Layout of a version 3 file::

    b"CCZPACK3" | payload | manifest | manifest length (uint32, little-endian)

The payload is one zstandard frame holding each tensor's streams back to back, in the
order of the manifest's sorted tensor names; each tensor is encoded by
:mod:`ci_compress.packing.encoding` (sparse positions as a mask or gaps, values as
integers, palettes or raw bytes, symbol streams rANS- or zstd-coded, each choice made
from histograms). The writer streams: it encodes one tensor, writes its streams
through the zstd compressor into the file and drops them, so memory stays near one copy
of the model; the manifest goes last, since it records sizes and the payload's sha256.
The manifest (zstd with a fixed dictionary of the manifest's own vocabulary, so a small
file pays little for it) holds the format version, the architecture spec (module types
and constructor arguments, see :mod:`ci_compress.packing.codecs`), each tensor's
encoding, the payload's sizes and sha256, the pass history and the library versions.
A model with modules of custom classes also ships its graph, a ``torch.export`` program
without weights, as the payload's last stream (``program`` in the manifest; checked and
deserialized without unpickling by :mod:`ci_compress.packing.program`).

The loader reads the manifest first and checks, before it allocates or decompresses
anything, that the payload has the announced size and sha256, that the streams the
manifest describes add up to the announced raw size, and that neither that size nor the
tensors the manifest declares exceed ``MAX_EXPANSION`` times the payload (or
``MAX_RAW_FLOOR``): a 679-byte file can no longer ask for a gigabyte. Modules are built
on the ``meta`` device and given exactly the stored tensors; a tensor the architecture
lacks, or one it has that the file does not, is an error. Files of versions 1 and 2
(a safetensors blob in the payload, :mod:`ci_compress.packing.legacy`) are still read.

The checksum catches corruption and truncation; it is not a signature (whoever can
rewrite the file can rewrite the manifest). Pin the shipped file's sha256 (report.json
records it) where provenance matters.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, BinaryIO

from ci_compress.errors import ArtifactError
from ci_compress.files import atomic_write_with
from ci_compress.layers.batches import Inputs
from ci_compress.layers.inspect import learned_tensors
from ci_compress.packing import codecs, encoding, legacy
from ci_compress.packing.encoding import Entropy
from ci_compress.versions import versions

if TYPE_CHECKING:
    import torch
    from torch import nn

MAGIC = b"CCZPACK3"  # version 3: streamed payload, manifest at the end
MAGIC_V2 = b"CCZPACK2"  # version 2: zstd-compressed manifest, then a safetensors payload
MAGIC_V1 = b"CCZPACK1"  # version 1: plain JSON manifest
MAGICS = (MAGIC_V1, MAGIC_V2, MAGIC)
FORMAT = "ci-compress-packed"
FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
# A payload may expand (and the tensors a manifest declares may take) at most this many
# times the payload's bytes, or MAX_RAW_FLOOR if that is larger: checked before anything
# is allocated or decompressed, a guard against decompression bombs.
MAX_EXPANSION = 10_000
MAX_RAW_FLOOR = 256 * 1024 * 1024
# Models whose tensors take up to this many bytes get the configured zstd level (19 by
# default: 2-3% smaller demo files, < 0.1 s, but ~100 MB of zstd context); larger ones at
# most FAST_LEVEL: their
# streams are entropy-coded already, and zstd 19 costs ~100x the CPU of zstd 3 for the
# same bytes there (docs/performance.md).
SMALL_MODEL_BYTES = 256 * 1024
# the manifest's "program": {"bytes": n, "format": PROGRAM_FORMAT}: a model's graph as
# torch.export's JSON serialization, the payload's last stream
PROGRAM_FORMAT = "torch.export-json"
FAST_LEVEL = 3
_CHUNK = 1 << 20
# A stream at least this large is compressed in zstd blocks of its own, so byte streams
# (int8 values) do not share a literal table with neighbouring rANS words or floats.
_OWN_BLOCK = 64 * 1024

# The manifest's zstd dictionary: the vocabulary manifests are written in (keys, module
# types, dtypes, codec names), written by hand, never trained on anyone's files. It is
# part of format version 3: changing it breaks every v3 file (tests pin its sha256).
_MANIFEST_DICT = "".join(
    [  # rarer fragments first: zstd reaches the end of a dictionary with shorter offsets
        '"versions":{"ci_compress":"0.1.0","constriction":"0.5.0","numpy":"2.4.6",',
        '"torch":"2.13.0+cpu","zstandard":"0.25.0"}}',
        '{"args":{"in_features":64,"out_features":10},"type":"DynamicQuantizedLinear"}',
        '{"args":{"bias":true,"in_dim":64,"out_dim":10},"type":"Int8WeightOnlyLinear"}',
        '{"args":{"bias":true,"dtype":"float16","in_dim":64,"out_dim":10},',
        '"type":"LowPrecisionLinear"}{"args":{"dim":1,"unflattened_size":[1,8,8]},',
        '"type":"Unflatten"}{"args":{"ceil_mode":false,"dilation":1,"kernel_size":2,',
        '"padding":0,"stride":2},"type":"MaxPool2d"}{"args":{"end_dim":-1,"start_dim":1},',
        '"type":"Flatten"}{"args":{"output_size":[1,1]},"type":"AdaptiveAvgPool2d"}',
        '{"args":{"bias":true,"dilation":[1,1],"groups":1,"in_channels":3,',
        '"kernel_size":[3,3],"out_channels":16,"padding":[1,1],"padding_mode":"zeros",',
        '"stride":[1,1]},"type":"Conv2d"}{"args":{"approximate":"none"},"type":"GELU"}',
        '{"args":{"eps":1e-05,"elementwise_affine":true,"normalized_shape":[64]},',
        '"type":"LayerNorm"}{"args":{"p":0.5},"type":"Dropout"}',
        '"passes":[{"details":{"pruned_weights":0,"schedule":[{"last_epoch_loss":0.0,',
        '"sparsity":0.9,"steps":200,"zeros_held":0}],"sparsity":0.9},"index":0,',
        '"modules":["0","2","4"],"name":"prune","nonzero_after":0,"nonzero_before":0,',
        '"options":{"amount":0.9,"batch_size":64,"exclude":[],"fine_tune_epochs":10,',
        '"include":["*"],"lr":0.001,"max_steps":null,"norm":"l1","scope":"global",',
        '"steps":1,"structured":false,"threshold":null,"type":"prune"},"params_after":0,',
        '"params_before":0},{"details":{"bits":4,"centroids":16,"distinct_values":',
        '{"0":16},"fine_tune":{"last_epoch_loss":0.0,"steps":200,"zeros_held":0}},',
        '"index":1,"name":"cluster","options":{"batch_size":64,"bits":4,"exclude":[],',
        '"fine_tune_epochs":10,"include":["*"],"iterations":30,"lr":0.0001,',
        '"max_steps":null,"type":"cluster"}},{"name":"quantize","options":',
        '{"scheme":"int8-dynamic","type":"quantize"}}],',
        '"payload":{"bytes":0,"level":19,"raw_bytes":0,"sha256":"',
        '{"architecture":{"children":[["0",{"args":{"bias":true,"in_features":64,',
        '"out_features":256},"type":"Linear"}],["1",{"type":"ReLU"}],["2",{"args":',
        '{"affine":true,"eps":1e-05,"momentum":0.1,"num_features":16,',
        '"track_running_stats":true},"type":"BatchNorm2d"}],["3",{"args":{"bias":true,',
        '"bits":4,"dilation":[1,1],"groups":1,"in_dim":16,"kernel_size":[3,3],',
        '"out_dim":32,"padding":[1,1],"stride":[1,1]},"type":"ClusteredConv2d"}],["4",',
        '{"args":{"bias":true,"bits":4,"in_dim":256,"out_dim":128},',
        '"type":"ClusteredLinear"}]],"type":"Sequential"},"factory":null,',
        '"format_version":3,"tensors":{"0.weight_scale":{"dtype":"float32",',
        '"layout":"dense","shape":[256],"values":{"codec":"raw","count":256,',
        '"shuffle":true}},"0.weight_int8":{"dtype":"int8","fill":0,"layout":"sparse",',
        '"positions":{"alphabet":256,"codec":"mask","coder":"bytes","count":2048},',
        '"shape":[256,64],"values":{"alphabet":255,"codec":"int","coder":"bytes",',
        '"count":1638,"offset":-127}},"2.running_mean":{},"2.running_var":{},',
        '"2.num_batches_tracked":{"dtype":"int64","layout":"dense","shape":[],"values":',
        '{"codec":"raw","count":1}},"2.codebook":{"dtype":"float32","layout":"dense",',
        '"shape":[16],"values":{"codec":"raw","count":16}},"2.indices":{"dtype":"uint8",',
        '"fill":0,"layout":"sparse","positions":{"alphabet":64,"bits":6,"codec":"gaps",',
        '"coder":"ans","count":2888,"precision":12,"table":20,"words":300},"shape":',
        '[128,256],"values":{"alphabet":15,"codec":"int","coder":"ans","count":2864,',
        '"offset":1,"precision":12,"table":20,"words":300}},"4.bias":{"dtype":"float32",',
        '"layout":"dense","shape":[10],"values":{"codec":"raw","count":10}},',
    ]
).encode()
_MANIFEST_DICT_SHA256 = "9b82edcf23a17b67ece33e011c1fa874cf495b4a03f8b01b2aeed2aa93aa22ec"


@dataclass
class PackInfo:
    path: Path
    file_bytes: int
    payload_bytes: int
    raw_bytes: int
    sha256: str  # of the whole file
    tensors: dict[str, dict[str, Any]] = field(default_factory=dict)
    manifest_bytes: int = 0
    entropy: str = "auto"  # the entropy mode the streams were coded with (auto, none, ans)
    payload_candidates: dict[str, int] = field(default_factory=dict)  # mode -> payload bytes
    entropy_bound_bytes: int = 0  # order-0 entropy of the stored streams (raw ones at size)
    zstd_level: int = 0
    # the model's graph (a torch.export program without weights) for models of custom
    # classes: its zstd'd bytes in the payload and its JSON before zstd, and why a model of
    # custom classes ships without one (rebuilt by model.factory instead)
    program_bytes: int = 0
    program_raw_bytes: int = 0
    program_skipped: str | None = None
    # module path -> class name of the packed model (a reloaded program's modules are
    # plain containers of its tensors; the size breakdown names the packed ones)
    module_types: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------- describe / rebuild


def describe(
    module: nn.Module,
    tensors: dict[str, torch.Tensor],
    path: str = "",
    *,
    tensor_lists: bool = True,
) -> dict[str, Any]:
    """Architecture spec of ``module``; fills ``tensors`` with its own tensors by full name.

    ``tensor_lists=False`` (format 3) leaves out each module's list of tensor names: the
    manifest's tensor table already names them.
    """
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
        if tensor_lists:
            spec["tensors"] = sorted(own)
        for name, t in own.items():
            tensors[f"{path}.{name}" if path else name] = t
    if codec is None or codec.container:
        children = [
            [n, describe(c, tensors, f"{path}.{n}" if path else n, tensor_lists=tensor_lists)]
            for n, c in module.named_children()
        ]
        if children:
            spec["children"] = children
    return spec


def _by_module(tensors: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    out: dict[str, dict[str, torch.Tensor]] = {}
    for full, t in tensors.items():
        owner, _, name = full.rpartition(".")
        out.setdefault(owner, {})[name] = t
    return out


def rebuild(
    spec: dict[str, Any],
    tensors: dict[str, torch.Tensor],
    factory_model: nn.Module | None,
    path: str = "",
) -> nn.Module:
    """Rebuild a module from its spec and exactly the stored tensors.

    Custom modules come from the trusted factory. Every stored tensor must be used and
    every tensor a module has must be stored: anything else is an ArtifactError.
    Consumes ``tensors``: each module's own go with it once it is built, so a layer whose
    module keeps another form of them (fbgemm's packed int8 weights) frees the decoded ones
    before the next layer is built, not when the whole model is.
    """
    owned = _by_module(tensors)
    tensors.clear()
    model = _rebuild(spec, owned, factory_model, path)
    left = sorted(f"{m}.{n}" if m else n for m, ts in owned.items() for n in ts)
    if left:
        raise ArtifactError(
            f"the packed file has tensors no module uses: {', '.join(left[:5])}"
            + (f" and {len(left) - 5} more" if len(left) > 5 else "")
            + "; the file is corrupt or was written for another architecture"
        )
    return model


def _rebuild(
    spec: dict[str, Any],
    owned: dict[str, dict[str, torch.Tensor]],
    factory_model: nn.Module | None,
    path: str,
) -> nn.Module:
    where = path or "<root>"
    if not isinstance(spec, dict):
        raise ArtifactError(f"the architecture spec at {where} is not an object")
    own = owned.pop(path, {})
    listed = spec.get("tensors")  # formats 1 and 2 list each module's tensors
    if listed is not None and sorted(listed) != sorted(own):
        missing = sorted(set(listed) - set(own))
        if missing:
            raise ArtifactError(
                f"tensor {(path + '.') if path else ''}{missing[0]} is missing from the payload"
            )
    kind = spec.get("type")
    if kind == "custom":
        module = _custom(spec, own, factory_model, path, where)
    else:
        codec = codecs.CODECS.get(str(kind))
        if codec is None:
            raise ArtifactError(
                f"the packed model uses module type {kind!r} at {where}, which this ci-compress does not know",
                hint="upgrade ci-compress to the version that wrote the file",
            )
        try:
            if codec.container:
                if own:
                    raise KeyError(f"a {codec.name} holds no tensors, the file has {sorted(own)}")
                module = codec.cls()()
            else:
                module = codecs.build_module(codec, spec.get("args", {}), own)
        except (TypeError, ValueError, KeyError, RuntimeError, AttributeError) as e:
            raise ArtifactError(f"cannot rebuild {kind} at {where}: {e}") from None
    for name, child_spec in spec.get("children", []):
        child_path = f"{path}.{name}" if path else name
        module.add_module(name, _rebuild(child_spec, owned, factory_model, child_path))
    return module


def _custom(
    spec: dict[str, Any],
    own: dict[str, torch.Tensor],
    factory_model: nn.Module | None,
    path: str,
    where: str,
) -> nn.Module:
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
    expected = set(codecs.own_tensors(None, module))
    if expected != set(own):
        raise ArtifactError(
            f"module {where} ({cls.__qualname__}) has tensors {sorted(expected)}, "
            f"the packed file {sorted(own)}"
        )
    import torch

    with torch.no_grad():
        for n, t in own.items():
            current = getattr(module, n)
            if tuple(current.shape) != tuple(t.shape):
                raise ArtifactError(
                    f"tensor {where}.{n} is {tuple(t.shape)} in the packed file, "
                    f"{tuple(current.shape)} in the factory's model"
                )
            setattr(
                module,
                n,
                torch.nn.Parameter(t, requires_grad=False) if n in module._parameters else t,
            )
    return module


# ---------------------------------------------------------------- writing


# The versions a packed file records (its manifest's "versions"; the set is part of the format).
LIBRARIES = ("ci_compress", "constriction", "numpy", "torch", "zstandard")


def library_versions() -> dict[str, str]:
    return {k: v or "unknown" for k, v in versions(LIBRARIES).items()}


class _Sink:
    """The output file, hashed as it is written (the whole file's sha256)."""

    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.sha = hashlib.sha256()
        self.bytes = 0

    def write(self, data: bytes) -> None:
        if data:
            self.f.write(data)
            self.sha.update(data)
            self.bytes += len(data)


def _manifest_codec(level: int) -> tuple[Any, Any]:
    import zstandard

    d = zstandard.ZstdCompressionDict(_MANIFEST_DICT, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    return (
        zstandard.ZstdCompressor(level=level, dict_data=d, write_checksum=True),
        zstandard.ZstdDecompressor(dict_data=d),
    )


def pack(
    model: nn.Module,
    path: Path,
    *,
    passes: list[dict[str, Any]] | None = None,
    factory: str | None = None,
    level: int = 19,
    entropy: Entropy = "auto",
    example: Inputs | None = None,
    rebuildable: bool = False,
) -> PackInfo:
    """Write ``model`` to ``path`` in the packed format (atomically, streamed) and describe it.

    A model with modules of custom classes also ships its graph (a ``torch.export``
    program of ``model`` on ``example``, one batch of inputs, without weights: see
    :mod:`ci_compress.packing.program`) so that it reloads without a factory; its tensors
    are then stored under the program's names. If it cannot be exported, a factory must
    be able to rebuild it (``factory``, the ``model.factory`` recorded in the file, or
    ``rebuildable``: the loader has one, e.g. a Hugging Face folder's config), or the
    packing fails naming the export's reason.

    ``entropy`` is ``auto`` (each symbol stream rANS- or zstd-coded, whichever its
    histogram says is smaller, zstd on a tie), ``none`` (never rANS) or ``ans`` (rANS
    wherever it applies); the last two exist to measure the choice. ``level`` is the zstd
    level of the manifest and, for models up to ``SMALL_MODEL_BYTES``, of the payload.
    """
    import zstandard

    tensors: dict[str, torch.Tensor] = {}
    arch = describe(model, tensors, tensor_lists=False)
    graph, skipped = _program(model, arch, example, bool(factory) or rebuildable)
    if graph is not None:
        tensors = graph.tensors
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    zlevel = level if total <= SMALL_MODEL_BYTES else min(level, FAST_LEVEL)
    entries: dict[str, dict[str, Any]] = {}
    info: dict[str, dict[str, Any]] = {}
    sizes: dict[str, Any] = {}

    def write(f: BinaryIO) -> None:
        sink = _Sink(f)
        sink.write(MAGIC)
        payload_sha = hashlib.sha256()
        payload_bytes = raw_bytes = 0
        bound = 0.0
        # the size hint lets zstd scale its window and tables to the model (level 19 on
        # a 100 kB model: a quarter of the CPU and ~80 MB less memory, the same bytes)
        params = zstandard.ZstdCompressionParameters.from_level(
            zlevel, source_size=max(1, total), write_checksum=1
        )
        z = zstandard.ZstdCompressor(compression_params=params).compressobj()

        def emit(data: bytes) -> None:
            nonlocal payload_bytes
            sink.write(data)
            payload_sha.update(data)
            payload_bytes += len(data)

        for name in sorted(tensors):
            enc = encoding.encode(tensors[name], entropy=entropy)
            for chunk in enc.chunks:
                size = encoding.nbytes(chunk)
                raw_bytes += size
                if size >= _OWN_BLOCK:  # its own zstd blocks: its own literal Huffman table
                    emit(z.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK))
                emit(z.compress(chunk))
                if size >= _OWN_BLOCK:
                    emit(z.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK))
            entries[name] = enc.entry
            bound += enc.entropy_bits
            info[name] = enc.entry | {
                "stored_bytes": enc.stored_bytes,
                "compressed_bytes": enc.est_bytes,
                "entropy_bits": round(enc.entropy_bits, 1),
            }
        program_start = None
        if graph is not None:  # the graph last: the loader reads it after the tensors
            raw_bytes += len(graph.graph)
            emit(z.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK))
            program_start = payload_bytes
            emit(z.compress(graph.graph))
        emit(z.flush())
        manifest = {
            "format_version": FORMAT_VERSION,
            "architecture": arch,
            "factory": factory,
            "tensors": entries,
            "payload": {
                "sha256": payload_sha.hexdigest(),
                "bytes": payload_bytes,
                "raw_bytes": raw_bytes,
                "level": zlevel,
            },
            "passes": passes or [],
            "versions": library_versions(),
        }
        if graph is not None:
            manifest["program"] = {"bytes": len(graph.graph), "format": PROGRAM_FORMAT}
        head = _manifest_codec(level)[0].compress(_dumps(manifest))
        sink.write(head)
        sink.write(struct.pack("<I", len(head)))
        sizes.update(
            file=sink.bytes,
            sha=sink.sha.hexdigest(),
            payload=payload_bytes,
            raw=raw_bytes,
            manifest=len(head),
            bound=bound,
            program=0 if program_start is None else payload_bytes - program_start,
        )

    atomic_write_with(path, write)
    return PackInfo(
        path=path,
        file_bytes=sizes["file"],
        payload_bytes=sizes["payload"],
        raw_bytes=sizes["raw"],
        sha256=sizes["sha"],
        tensors=info,
        manifest_bytes=sizes["manifest"],
        entropy=entropy,
        payload_candidates={entropy: sizes["payload"]},
        entropy_bound_bytes=int(sizes["bound"] / 8),
        zstd_level=zlevel,
        program_bytes=sizes["program"],
        program_raw_bytes=len(graph.graph) if graph is not None else 0,
        program_skipped=skipped,
        module_types={n: type(m).__name__ for n, m in model.named_modules()},
    )


def _custom_classes(spec: dict[str, Any], path: str = "") -> list[tuple[str, str]]:
    """(module path, class) of every custom module in an architecture spec."""
    found = []
    if spec.get("type") == "custom":
        found.append((path or "<root>", str(spec.get("class"))))
    for name, child in spec.get("children", []):
        found += _custom_classes(child, f"{path}.{name}" if path else name)
    return found


def _int8_dynamic(spec: dict[str, Any], path: str = "") -> str | None:
    """The path of the first torch.ao dynamic int8 Linear in a spec, if any."""
    if spec.get("type") == "DynamicQuantizedLinear":
        return path or "<root>"
    for name, child in spec.get("children", []):
        found = _int8_dynamic(child, f"{path}.{name}" if path else name)
        if found:
            return found
    return None


def _program(
    model: nn.Module, arch: dict[str, Any], example: Inputs | None, rebuildable: bool
) -> tuple[Any, str | None]:
    """The graph to ship (``program.Program``) or None, and why a custom model has none."""
    custom = _custom_classes(arch)
    if not custom:
        return None, None  # standard layers: rebuilt from the spec, as before
    where, cls = custom[0]
    if example is None:
        return None, "no example inputs were given to export the model with"
    int8 = _int8_dynamic(arch)
    if int8:  # torch.export cannot capture fbgemm's packed weights
        reason = f"torch.export cannot capture torch.ao int8-dynamic layers (at {int8})"
        if rebuildable:
            return None, reason
        raise ArtifactError(
            f"cannot ship the model: module {where} is of the custom class {cls}, and {reason}",
            hint="give model.factory (package.module:function) to rebuild it, or quantize "
            "with scheme int8-weight-only, int8-static, fp16 or bf16",
        )
    from ci_compress.packing import program

    try:
        return program.make_program(model, example), None
    except program.ProgramError as e:
        reason = f"torch.export failed: {e}"
    if rebuildable:
        return None, reason
    raise ArtifactError(
        f"cannot ship the model: module {where} is of the custom class {cls}, and {reason}",
        hint="make the model exportable with torch.export (no data-dependent Python control flow), "
        "or give model.factory (package.module:function) to rebuild it",
    )


def _dumps(manifest: dict[str, Any]) -> bytes:
    return json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()


def assemble(manifest: dict[str, Any], payload: bytes, *, level: int = 19) -> bytes:
    """The bytes of a version 3 file with this manifest and payload (tools and tests)."""
    head: bytes = _manifest_codec(level)[0].compress(_dumps(manifest))
    return MAGIC + payload + head + struct.pack("<I", len(head))


# ---------------------------------------------------------------- reading


@dataclass
class _Layout:
    """Where a version 3 file's parts are."""

    manifest: dict[str, Any]
    payload_start: int
    payload_bytes: int


def _open_error(path: Path, e: OSError) -> ArtifactError:
    if isinstance(e, FileNotFoundError):
        return ArtifactError(f"packed model not found: {path}")
    return ArtifactError(f"cannot read packed model {path}: {e.strerror}")


def _check_magic(path: Path, head: bytes) -> bytes:
    if head in MAGICS:
        return head
    if any(m.startswith(head) for m in MAGICS):
        raise ArtifactError(f"{path} is truncated (it ends inside the magic bytes)")
    raise ArtifactError(f"{path} is not a ci-compress packed file (bad magic bytes)")


def _parse_manifest(path: Path, text: bytes) -> dict[str, Any]:
    try:
        manifest = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(
            f"{path}: the manifest is not valid JSON ({e}); the file is corrupt"
        ) from None
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{path}: not a ci-compress packed manifest")
    if manifest.get("format_version") not in READABLE_VERSIONS:
        raise ArtifactError(
            f"{path}: packed format version {manifest.get('format_version')!r}, this ci-compress reads {', '.join(map(str, READABLE_VERSIONS))}",
            hint="use the ci-compress version that wrote the file",
        )
    if not isinstance(manifest.get("payload"), dict) or not isinstance(
        manifest.get("tensors"), dict
    ):
        raise ArtifactError(
            f"{path}: the manifest has no payload or tensors section; the file is corrupt"
        )
    return manifest


def _decompress_manifest(path: Path, head: bytes, dctx: Any, *, at_end: bool = False) -> bytes:
    import zstandard

    parts: list[bytes] = []
    size = 0
    try:
        with dctx.stream_reader(head) as reader:
            # 64 KiB at a time: one read of MAX_MANIFEST_BYTES + 1 reserved 16 MiB for
            # every manifest, most of them a few hundred bytes
            while size <= MAX_MANIFEST_BYTES and (part := reader.read(1 << 16)):
                parts.append(part)
                size += len(part)
    except zstandard.ZstdError as e:
        if at_end:  # format 3: a cut file ends inside its payload, not in a manifest
            raise ArtifactError(
                f"{path} is truncated or corrupt: cannot decompress the manifest at its end ({e})"
            ) from None
        raise ArtifactError(
            f"{path}: cannot decompress the manifest ({e}); the file is corrupt"
        ) from None
    if size > MAX_MANIFEST_BYTES:
        raise ArtifactError(f"{path}: the manifest expands beyond {MAX_MANIFEST_BYTES} bytes")
    return b"".join(parts)


def _layout(path: Path, f: IO[bytes], size: int) -> _Layout:
    """Read and check a version 3 file's manifest (the file is open at any position)."""
    if size < len(MAGIC) + 4:
        raise ArtifactError(f"{path} is truncated (no manifest length)")
    f.seek(size - 4)
    (n,) = struct.unpack("<I", f.read(4))
    start = len(MAGIC)
    if n > MAX_MANIFEST_BYTES or start + n + 4 > size:
        raise ArtifactError(
            f"{path} is truncated or corrupt (manifest of {n} bytes does not fit in {size} bytes)"
        )
    f.seek(size - 4 - n)
    text = _decompress_manifest(path, f.read(n), _manifest_codec(3)[1], at_end=True)
    manifest = _parse_manifest(path, text)
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{path}: a version 3 file with a manifest of another version")
    payload_bytes = size - 4 - n - start
    if payload_bytes != manifest["payload"].get("bytes"):
        raise ArtifactError(
            f"{path} is truncated: payload has {payload_bytes} bytes, the manifest says {manifest['payload'].get('bytes')}"
        )
    return _Layout(manifest, start, payload_bytes)


def _legacy_manifest(path: Path, blob: bytes) -> tuple[dict[str, Any], bytes]:
    """Manifest and payload of a version 1 or 2 file."""
    (n,) = struct.unpack("<I", blob[len(MAGIC) : len(MAGIC) + 4])
    start = len(MAGIC) + 4
    if n > MAX_MANIFEST_BYTES or start + n > len(blob):
        raise ArtifactError(
            f"{path} is truncated or corrupt (manifest of {n} bytes does not fit in {len(blob)} bytes)"
        )
    head = blob[start : start + n]
    if blob.startswith(MAGIC_V2):
        import zstandard

        head = _decompress_manifest(path, head, zstandard.ZstdDecompressor())
    manifest = _parse_manifest(path, head)
    if manifest.get("format") != FORMAT:
        raise ArtifactError(f"{path}: not a ci-compress packed manifest")
    payload = blob[start + n :]
    if len(payload) != manifest["payload"].get("bytes"):
        raise ArtifactError(
            f"{path} is truncated: payload has {len(payload)} bytes, the manifest says {manifest['payload'].get('bytes')}"
        )
    _check_sha(path, manifest, iter([payload]))
    return manifest, payload


def _check_sha(path: Path, manifest: dict[str, Any], chunks: Iterator[bytes]) -> None:
    h = hashlib.sha256()
    for c in chunks:
        h.update(c)
    if h.hexdigest() != manifest["payload"].get("sha256"):
        raise ArtifactError(
            f"{path}: payload sha256 does not match the manifest; the file is corrupt or was tampered with"
        )


def _file_chunks(f: IO[bytes], start: int, length: int) -> Iterator[bytes]:
    f.seek(start)
    left = length
    while left > 0:
        chunk = f.read(min(_CHUNK, left))
        if not chunk:
            return
        left -= len(chunk)
        yield chunk


def _open_packed(path: Path, f: IO[bytes]) -> _Layout | tuple[dict[str, Any], bytes]:
    """The layout of a version 3 file open as ``f``, or a version 1 or 2 file's manifest
    and (checked) payload, read whole."""
    magic = _check_magic(path, f.read(len(MAGIC)))
    if magic != MAGIC:
        f.seek(0)
        blob = f.read()
        if len(blob) < len(MAGIC) + 4:
            raise ArtifactError(f"{path} is truncated (no manifest length)")
        return _legacy_manifest(path, blob)
    size = f.seek(0, 2)
    return _layout(path, f, size)


def read_manifest(path: Path) -> tuple[dict[str, Any], bytes]:
    """The manifest and the (checked) payload of a packed file of any readable version."""
    try:
        with path.open("rb") as f:
            lay = _open_packed(path, f)
            if not isinstance(lay, _Layout):
                return lay
            payload = b"".join(_file_chunks(f, lay.payload_start, lay.payload_bytes))
    except OSError as e:
        raise _open_error(path, e) from None
    _check_sha(path, lay.manifest, iter([payload]))
    return lay.manifest, payload


def load_packed(
    path: Path, *, factory: Callable[[], nn.Module] | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a runnable model from a packed file, verifying it first."""
    try:
        with path.open("rb") as f:
            lay = _open_packed(path, f)
            if isinstance(lay, _Layout):
                manifest = lay.manifest
                tensors, graph = _tensors(path, f, lay)
            else:
                manifest, payload = lay
                tensors, graph = _legacy_tensors(path, manifest, payload), None
    except OSError as e:
        raise _open_error(path, e) from None
    arch = manifest.get("architecture")
    if not isinstance(arch, dict):
        raise ArtifactError(f"{path}: the manifest has no architecture; the file is corrupt")
    try:
        if graph is not None:  # the model's own graph: no factory needed (nor used)
            from ci_compress.packing.program import load_program

            program = load_program(graph, tensors)
            program.eval()
            return program, manifest
        factory_model = factory() if factory is not None else None
        model = rebuild(arch, tensors, factory_model)
    except ArtifactError as e:
        raise ArtifactError(f"{path}: {e.message}", hint=e.hint) from None
    model.eval()
    return model, manifest


def load_student(path: str | Path, *, factory: Callable[[], nn.Module] | None = None) -> nn.Module:
    """The shipped student, ready to serve (``ci_compress.load_student``).

    Verifies the file (magic, sizes, checksum) and rebuilds the model in eval mode on the
    CPU. Standard layers are rebuilt from the file alone, and so is a model of your own
    classes when the file holds its graph (a ``torch.export`` program, written for
    every model of custom classes that torch.export can capture: docs/shipped-file.md). ``factory`` (the config's
    ``model.factory``, a function returning the model) is needed only for older files of
    such models, or models that could not be exported. Needs ci-compress's core dependencies
    (torch, numpy, zstandard, constriction), nothing of MLflow or the CI tools.
    """
    model, _ = load_packed(Path(path), factory=factory)
    return model


def _bound(payload_bytes: int) -> int:
    return max(MAX_RAW_FLOOR, MAX_EXPANSION * payload_bytes)


def _program_bytes(path: Path, manifest: dict[str, Any]) -> int | None:
    """The size of the payload's graph stream, None without one (checked, bounded)."""
    from ci_compress.packing.program import MAX_PROGRAM_BYTES

    entry = manifest.get("program")
    if entry is None:
        return None
    n = entry.get("bytes") if isinstance(entry, dict) else None
    if not isinstance(n, int) or isinstance(n, bool) or not 0 < n <= MAX_PROGRAM_BYTES:
        raise ArtifactError(
            f"{path}: the manifest's program.bytes is not a byte count up to {MAX_PROGRAM_BYTES}"
        )
    if entry.get("format") != PROGRAM_FORMAT:
        raise ArtifactError(
            f"{path}: the program is in format {entry.get('format')!r}, this ci-compress reads {PROGRAM_FORMAT!r}",
            hint="use the ci-compress version that wrote the file",
        )
    return n


def _tensors(
    path: Path, f: IO[bytes], lay: _Layout
) -> tuple[dict[str, torch.Tensor], bytes | None]:
    """Decode a version 3 payload (tensors, then the graph if there is one), every size
    checked before it is allocated."""
    import zstandard

    entries = lay.manifest["tensors"]
    raw_bytes = lay.manifest["payload"].get("raw_bytes")
    if not isinstance(raw_bytes, int) or isinstance(raw_bytes, bool) or raw_bytes < 0:
        raise ArtifactError(f"{path}: the manifest's payload.raw_bytes is not a byte count")
    limit = _bound(lay.payload_bytes)
    program_bytes = _program_bytes(path, lay.manifest)
    claimed = program_bytes or 0
    declared = 0
    try:
        for name in sorted(entries):
            if not isinstance(entries[name], dict):
                raise ArtifactError(f"tensor {name}: bad manifest entry")
            claimed += encoding.entry_bytes(name, entries[name])
            dtype, _, numel = encoding.tensor_header(name, entries[name])
            declared += numel * encoding._itemsize(dtype)
    except ArtifactError as e:
        raise ArtifactError(f"{path}: {e.message}", hint=e.hint) from None
    if max(raw_bytes, declared) > limit:
        raise ArtifactError(
            f"{path}: the manifest declares {max(raw_bytes, declared)} bytes of tensors and streams "
            f"for a {lay.payload_bytes}-byte payload; refused as a likely decompression bomb"
        )
    if claimed != raw_bytes:
        raise ArtifactError(
            f"{path}: the tensor streams add up to {claimed} bytes, the manifest says {raw_bytes}; "
            "the file is corrupt"
        )
    _check_sha(path, lay.manifest, _file_chunks(f, lay.payload_start, lay.payload_bytes))
    f.seek(lay.payload_start)
    source = _Bounded(f, lay.payload_bytes)
    out: dict[str, torch.Tensor] = {}
    try:
        stream = zstandard.ZstdDecompressor().stream_reader(source, read_size=_CHUNK)  # type: ignore[arg-type]
        with stream as reader:
            got = 0

            def read(n: int) -> bytes:
                nonlocal got
                if n < 0 or got + n > raw_bytes:
                    raise ArtifactError(
                        f"{path}: a stream reads past the payload's {raw_bytes} bytes"
                    )
                parts = []
                left = n
                while left:
                    part = reader.read(left)
                    if not part:
                        raise ArtifactError(f"{path}: the payload ends early; the file is corrupt")
                    parts.append(part)
                    left -= len(part)
                got += n
                return parts[0] if len(parts) == 1 else b"".join(parts)

            for name in sorted(entries):
                out[name] = encoding.decode(name, entries[name], read)
            graph = read(program_bytes) if program_bytes else None
            if got != raw_bytes or reader.read(1):
                raise ArtifactError(
                    f"{path}: payload decompressed to more than the {got} bytes its streams use; "
                    "the file is corrupt or was tampered with"
                )
    except zstandard.ZstdError as e:
        raise ArtifactError(
            f"{path}: cannot decompress the payload ({e}); the file is corrupt"
        ) from None
    except ArtifactError as e:
        if e.message.startswith(str(path)):
            raise
        raise ArtifactError(f"{path}: {e.message}", hint=e.hint) from None
    return out, graph


class _Bounded:
    """A read-only view of ``length`` bytes of a file from its current position."""

    def __init__(self, f: IO[bytes], length: int) -> None:
        self.f = f
        self.left = length

    def read(self, n: int = -1) -> bytes:
        if n < 0 or n > self.left:
            n = self.left
        data = self.f.read(n)
        self.left -= len(data)
        return data


def _legacy_tensors(
    path: Path, manifest: dict[str, Any], payload: bytes
) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load as st_load

    raw = _legacy_decompress(path, payload, manifest["payload"].get("raw_bytes"))
    try:
        stored = st_load(raw)
    except (SafetensorError, ValueError) as e:
        raise ArtifactError(f"{path}: the tensor payload is unreadable ({e})") from None
    try:
        return {
            name: legacy.decode(name, entry, stored) for name, entry in manifest["tensors"].items()
        }
    except KeyError as e:
        raise ArtifactError(f"{path}: tensor stream {e} is missing from the payload") from None
    except ArtifactError as e:
        raise ArtifactError(f"{path}: {e.message}", hint=e.hint) from None


def _legacy_decompress(path: Path, payload: bytes, raw_bytes: Any) -> bytes:
    """Decompress a version 1/2 payload, never producing more than the manifest announces."""
    import zstandard

    if not isinstance(raw_bytes, int) or isinstance(raw_bytes, bool) or raw_bytes < 0:
        raise ArtifactError(f"{path}: the manifest's payload.raw_bytes is not a byte count")
    if raw_bytes > _bound(len(payload)):
        raise ArtifactError(
            f"{path}: the payload claims to expand from {len(payload)} to {raw_bytes} bytes; "
            "refused as a likely decompression bomb"
        )
    chunks: list[bytes] = []
    got = 0
    try:
        with zstandard.ZstdDecompressor().stream_reader(payload) as reader:
            while got <= raw_bytes:
                chunk = reader.read(min(_CHUNK, raw_bytes + 1 - got))
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


# ---------------------------------------------------------------- size breakdown


def size_breakdown(model: nn.Module, info: PackInfo) -> dict[str, Any]:
    """Where the shipped bytes go: totals from the real file, and one row per module.

    Per module: parameters and nonzero parameters (quantized weights counted as their
    float values), the encodings of its tensors, ``stored_bytes`` (its streams before
    zstd) and ``compressed_bytes``: the size the packer estimated for its streams when it
    chose their encodings (the payload is compressed as a whole, so rows need not add up
    to the payload). ``entropy_bound_bytes``: the order-0 entropy of the stored symbol
    streams (raw streams at their size), what a coder of independent symbols can reach.
    ``program_bytes``: what the model's graph takes in the payload (models of custom
    classes, see :mod:`ci_compress.packing.program`); rows are then empty when ``model``
    is the reloaded program, whose modules are graph operations.
    """
    rows: list[dict[str, Any]] = []
    from ci_compress.packing.program import ExportedProgram

    if isinstance(model, ExportedProgram):
        model = model.program  # its modules hold the packed model's tensors by the same paths
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
                "type": info.module_types.get(mod_name, type(module).__name__),
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
        "entropy_bound_bytes": info.entropy_bound_bytes,
        "program_bytes": info.program_bytes,
        "program_raw_bytes": info.program_raw_bytes,
        "program_skipped": info.program_skipped,
        "layers": rows,
        "note": "layers[].compressed_bytes: the packer's estimate for each module's streams; "
        "file_bytes is the real shipped file",
    }


def _describe_entry(e: dict[str, Any]) -> str:
    """A short human form of a tensor's encoding, e.g. ``sparse(gaps7+ans) int+bytes int8``."""

    def stream(m: dict[str, Any]) -> str:
        codec = str(m.get("codec"))
        if "layout" in e:  # format 3
            width = m.get("bits") if codec == "gaps" else ""
            return f"{codec}{width or ''}" + (f"+{m['coder']}" if m.get("coder") else "")
        bits = m.get("bits")
        return f"{codec}{bits if codec != 'raw' and bits else ''}" + (
            "+huffman" if m.get("entropy") == "huffman" else ""
        )

    values = e.get("values", {})
    layout = e.get("layout", e.get("encoding"))
    if layout == "sparse":
        return f"sparse({stream(e.get('positions', {}))}) {stream(values)} {e.get('dtype')}"
    return f"dense {stream(values)} {e.get('dtype')}"
