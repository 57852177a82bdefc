"""Reading tensors of packed files of format versions 1 and 2 (written before v3).

Those files hold a safetensors blob inside one zstd frame; each tensor is ``dense`` or
``sparse`` (a bitmask or Deep Compression's index deltas with filler symbols), its
integer streams bit-packed or canonical-Huffman coded (bitarray's C decoder). Only the
decoder is kept: ci-compress writes version 3 (:mod:`ci_compress.packing.encoding`).
The decoder checks counts and ranges and raises :class:`ArtifactError` on anything
that does not add up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ci_compress.errors import ArtifactError

if TYPE_CHECKING:
    import numpy as np
    import torch

MAX_SYMBOL_BITS = 24


# ---------------------------------------------------------------- bit packing


def bitunpack(buf: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`bitpack`."""
    import numpy as np

    buf = np.asarray(buf, dtype=np.uint8).reshape(-1)
    if bits == 8:
        if buf.size != count:
            raise ValueError(f"{buf.size} bytes for {count} 8-bit symbols")
        return buf.astype(np.int64)
    if buf.size != (count * bits + 7) // 8:
        raise ValueError(f"{buf.size} bytes for {count} symbols of {bits} bits")
    planes = np.unpackbits(buf)[: count * bits].reshape(count, bits)
    out = np.zeros(count, dtype=np.int64)
    for j in range(bits):
        out |= planes[:, j].astype(np.int64) << (bits - 1 - j)
    return out


# ---------------------------------------------------------------- Huffman


def huffman_decode(data: np.ndarray, nbits: int, table: np.ndarray, count: int) -> np.ndarray:
    import numpy as np
    from bitarray import bitarray
    from bitarray.util import canonical_decode

    table = np.asarray(table, dtype=np.int64).reshape(-1)
    if table.size < 1 or table[0] < 1 or table.size < 1 + table[0]:
        raise ValueError("malformed Huffman table")
    n_len = int(table[0])
    lengths = [int(x) for x in table[1 : 1 + n_len]]
    symbols = [int(x) for x in table[1 + n_len :]]
    if sum(lengths) != len(symbols):
        raise ValueError("Huffman table counts do not match its symbols")
    a = bitarray(endian="big")
    a.frombytes(np.asarray(data, dtype=np.uint8).tobytes())
    if nbits > len(a) or len(a) - nbits >= 8:
        raise ValueError(f"Huffman stream of {len(a)} bits, the manifest says {nbits}")
    del a[nbits:]
    out = np.fromiter(canonical_decode(a, lengths, symbols), dtype=np.int64, count=count)
    return out


# ---------------------------------------------------------------- symbol streams


def _read_symbols(key: str, meta: dict[str, Any], raw: dict[str, torch.Tensor]) -> np.ndarray:
    bits, count = int(meta["bits"]), int(meta["count"])
    if not 1 <= bits <= MAX_SYMBOL_BITS or count < 0:
        raise ValueError(f"bad symbol stream header (bits={bits}, count={count})")
    data = raw[key].numpy()
    if meta.get("entropy", "none") == "huffman":
        sym = huffman_decode(data, int(meta["coded_bits"]), raw[f"{key}.huffman"].numpy(), count)
    elif meta.get("entropy", "none") == "none":
        sym = bitunpack(data, bits, count)
    else:
        raise ValueError(f"unknown entropy coding {meta.get('entropy')!r}")
    if sym.size and (sym.min() < 0 or sym.max() >= (1 << bits)):
        raise ValueError(f"symbols out of range for {bits} bits")
    return sym


# ---------------------------------------------------------------- positions (sparse)


def delta_positions(sym: np.ndarray, bits: int) -> np.ndarray:
    import numpy as np

    m = (1 << bits) - 1
    advance = np.where(sym == 0, m, sym)
    out: np.ndarray = (np.cumsum(advance) - 1)[sym != 0]
    return out


# ---------------------------------------------------------------- values


def _read_values(
    key: str, meta: dict[str, Any], raw: dict[str, torch.Tensor], dtype: torch.dtype
) -> torch.Tensor:
    import torch

    codec = meta.get("codec")
    if codec == "raw":
        t = raw[key].reshape(-1)
        if t.numel() != int(meta["count"]) or t.dtype != dtype:
            raise ValueError(
                f"{t.numel()} {t.dtype} values, the manifest says {meta['count']} {dtype}"
            )
        return t
    sym = _read_symbols(key, meta, raw)
    if codec == "bitpack":
        return (torch.from_numpy(sym) + int(meta["offset"])).to(dtype)
    if codec == "palette":
        palette = raw[f"{key}.palette"].reshape(-1)
        if palette.dtype != dtype or palette.numel() != int(meta["palette"]):
            raise ValueError("palette does not match the manifest")
        if sym.size and sym.max() >= palette.numel():
            raise ValueError("palette index out of range")
        return palette[torch.from_numpy(sym)]
    raise ValueError(f"unknown value codec {codec!r}")


# ---------------------------------------------------------------- tensors


def decode(name: str, entry: dict[str, Any], raw: dict[str, torch.Tensor]) -> torch.Tensor:
    """Rebuild one tensor from its manifest entry and the stored streams.

    Raises KeyError for a missing stream and ArtifactError for anything inconsistent.
    """
    import numpy as np
    import torch

    try:
        shape = tuple(int(s) for s in entry["shape"])
        dtype = getattr(torch, str(entry["dtype"]))
        if not isinstance(dtype, torch.dtype):
            raise TypeError(entry["dtype"])
    except (KeyError, TypeError, ValueError, AttributeError):
        raise ArtifactError(f"tensor {name}: bad dtype or shape in the manifest") from None
    numel = int(np.prod(shape)) if shape else 1
    encoding = entry.get("encoding")
    try:
        if encoding == "dense" and "values" not in entry:  # format version 1
            t = raw[name]
        elif encoding == "bitmask":  # format version 1
            bits = np.unpackbits(raw[f"{name}::mask"].numpy())[:numel].astype(bool)
            values = raw[f"{name}::values"]
            if int(bits.sum()) != values.numel():
                raise ValueError("mask and values disagree")
            t = torch.zeros(numel, dtype=values.dtype)
            t[torch.from_numpy(bits)] = values
        elif encoding == "dense":
            t = _read_values(f"{name}::values", entry["values"], raw, dtype)
        elif encoding == "sparse":
            values = _read_values(f"{name}::values", entry["values"], raw, dtype)
            pmeta = entry["positions"]
            sym = _read_symbols(f"{name}::positions", pmeta, raw)
            if pmeta.get("codec") == "bitmask":
                if sym.size != numel:
                    raise ValueError("bitmask length does not match the shape")
                pos = np.flatnonzero(sym)
            elif pmeta.get("codec") == "delta":
                pos = delta_positions(sym, int(pmeta["bits"]))
            else:
                raise ValueError(f"unknown position codec {pmeta.get('codec')!r}")
            if pos.size != values.numel():
                raise ValueError(f"{pos.size} positions for {values.numel()} values")
            if pos.size and pos[-1] >= numel:
                raise ValueError("a position lies outside the tensor")
            t = torch.full((numel,), entry["fill"], dtype=dtype)
            t[torch.from_numpy(pos)] = values
        else:
            raise ArtifactError(
                f"tensor {name}: unknown encoding {encoding!r}",
                hint="upgrade ci-compress to the version that wrote the file",
            )
    except (ValueError, TypeError, RuntimeError, IndexError, OverflowError) as e:
        raise ArtifactError(
            f"tensor {name}: cannot decode ({e}); the packed file is corrupt"
        ) from None
    if t.numel() != numel:
        raise ArtifactError(
            f"tensor {name}: shape {tuple(t.shape)} does not match the manifest {shape}"
        )
    return t.reshape(shape)
