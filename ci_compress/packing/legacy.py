"""Tensor encodings of the packed format, generic over tensors (never over module types).

Every tensor a layer codec hands to the packer is encoded here by looking only at its
dtype, shape and values, so a pass that adds a module type (k-means clustered layers
storing uint8 indices plus a codebook, fp16 layers, low-rank factors) gets the same
encodings without touching this file. The encodings follow Deep Compression (Han et
al., 2016): sparse storage with relative indices, small integers at the bits they
need, and entropy coding of the quantized values and indices.

A tensor is stored either ``dense`` or ``sparse``:

* ``sparse``: the elements equal to ``fill`` (0 for floats, the most frequent value for
  integers, e.g. the index of the cluster that holds the pruned zeros) are left out;
  the positions of the others are stored either as a **bitmask** (one bit per element)
  or as **index deltas** (the gap to the previous kept element in ``bits`` bits; a
  gap too large for ``bits`` is split by filler symbols ``0`` that each advance
  ``2**bits - 1`` positions, Deep Compression's zero padding) -- whichever is smaller.
* the values (all elements, or the kept ones) are ``raw`` (original dtype),
  ``bitpack`` (integers minus ``offset`` in the ``bits`` their range needs) or
  ``palette`` (a float tensor with at most 256 distinct values: the sorted distinct
  values plus indices in ``bits`` bits).

Each integer symbol stream (delta indices, bit-packed values, palette indices) is then
either kept bit-packed (fixed width, left to the payload's zstd) or **Huffman coded**
(canonical code, table stored beside it): whichever measures smaller. Every choice is
measured on the tensor itself, written into the manifest entry, and reversible: the
decoder checks counts and ranges and raises :class:`ArtifactError` on anything that
does not add up.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal

from ci_compress.errors import ArtifactError

if TYPE_CHECKING:
    import numpy as np
    import torch

Entropy = Literal["auto", "none", "huffman"]

SPARSE_MIN_FRACTION = 0.25  # fill elements needed before a sparse layout is tried
MIN_NUMEL = 64  # smaller tensors are stored raw: their encoding would cost more than it saves
PALETTE_MAX = 256
MAX_SYMBOL_BITS = 24
HUFFMAN_MIN_SYMBOLS = 16
LARGE_NUMEL = 1 << 20  # above this, choices are measured at a faster zstd level

_INT_DTYPES = ("int8", "uint8", "int16", "int32", "int64", "uint16", "uint32")
_FLOAT_DTYPES = ("float32", "float16", "bfloat16", "float64")


# ---------------------------------------------------------------- bit packing


def bitpack(sym: np.ndarray, bits: int) -> np.ndarray:
    """Pack non-negative integers < 2**bits, most significant bit first, into bytes."""
    import numpy as np

    sym = np.asarray(sym, dtype=np.int64)
    if bits == 8:
        return sym.astype(np.uint8)
    planes = np.empty((sym.size, bits), dtype=np.uint8)
    for j in range(bits):
        planes[:, j] = (sym >> (bits - 1 - j)) & 1
    return np.packbits(planes.reshape(-1))


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


def huffman_encode(sym: np.ndarray) -> tuple[bytes, int, np.ndarray]:
    """Canonical Huffman code of ``sym``: (bit stream bytes, bit count, table).

    The table is ``[len(count), *count, *symbols]`` (bitarray's canonical form:
    ``count[L]`` codes of length L, symbols in canonical order).
    """
    import numpy as np
    from bitarray import bitarray
    from bitarray.util import canonical_huffman

    values, counts = np.unique(np.asarray(sym, dtype=np.int64), return_counts=True)
    code, count, symbols = canonical_huffman(
        {int(v): int(c) for v, c in zip(values, counts, strict=True)}
    )
    a = bitarray(endian="big")
    a.encode(code, sym.tolist())
    table = np.array([len(count), *count, *symbols], dtype=np.int64)
    dtype = np.uint16 if table.max(initial=0) < (1 << 16) else np.uint32
    return a.tobytes(), len(a), table.astype(dtype)


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


class _Sizer:
    """zstd-compressed size of a candidate, the yardstick every choice is made with."""

    def __init__(self, level: int) -> None:
        import zstandard

        self.fast = zstandard.ZstdCompressor(level=min(level, 6))
        self.exact = zstandard.ZstdCompressor(level=level)

    def __call__(self, parts: list[bytes], numel: int = 0) -> int:
        blob = b"".join(parts)
        c = self.fast if numel > LARGE_NUMEL else self.exact
        return len(c.compress(blob))


def _symbols(
    key: str,
    sym: np.ndarray,
    bits: int,
    out: dict[str, np.ndarray],
    sizer: _Sizer,
    entropy: Entropy,
    *,
    huffman_ok: bool = True,
) -> tuple[dict[str, Any], int]:
    """Store a symbol stream bit-packed or Huffman coded; returns (meta, size estimate)."""
    import numpy as np

    packed = bitpack(sym, bits)
    meta: dict[str, Any] = {"bits": bits, "count": int(sym.size), "entropy": "none"}
    est = sizer([packed.tobytes()], sym.size)
    use_huffman = False
    if huffman_ok and entropy != "none" and sym.size >= HUFFMAN_MIN_SYMBOLS:
        data, nbits, table = huffman_encode(sym)
        h_est = sizer([data, table.tobytes()], sym.size)
        if entropy == "huffman" or h_est < est:
            use_huffman = True
            out[key] = np.frombuffer(data, dtype=np.uint8).copy()
            out[f"{key}.huffman"] = table
            meta.update(entropy="huffman", coded_bits=nbits)
            est = h_est
    if not use_huffman:
        out[key] = packed
    return meta, est


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


def delta_symbols(pos: np.ndarray, bits: int) -> np.ndarray:
    """Deep Compression's relative indices: gaps in ``bits`` bits, fillers (0) for long gaps."""
    import numpy as np

    m = (1 << bits) - 1
    d = np.diff(np.concatenate([np.array([-1], dtype=np.int64), pos.astype(np.int64)]))
    k = (d - 1) // m  # fillers before each element
    r = d - k * m  # 1..m
    out = np.zeros(int(pos.size + k.sum()), dtype=np.int64)
    out[np.cumsum(k + 1) - 1] = r
    return out


def delta_positions(sym: np.ndarray, bits: int) -> np.ndarray:
    import numpy as np

    m = (1 << bits) - 1
    advance = np.where(sym == 0, m, sym)
    out: np.ndarray = (np.cumsum(advance) - 1)[sym != 0]
    return out


def _delta_bit_candidates(pos: np.ndarray, keep: int = 3) -> list[int]:
    """Delta widths with the smallest estimated coded size (fixed width, or Huffman
    approximated by the entropy but never below one bit per symbol), best first."""
    import numpy as np

    d = np.diff(np.concatenate([np.array([-1], dtype=np.int64), pos.astype(np.int64)]))
    scored = []
    for bits in range(2, 17):
        m = (1 << bits) - 1
        fillers = int(((d - 1) // m).sum())
        n = pos.size + fillers
        hist = np.bincount(np.minimum(d, m + 1), minlength=m + 2)[1 : m + 1].astype(float)
        hist = np.append(hist, fillers)
        hist = hist[hist > 0]
        entropy = float(-(hist * np.log2(hist / max(n, 1))).sum())
        scored.append((min(n * bits, max(entropy, n) + 16 * hist.size), bits))
    return [b for _, b in sorted(scored)[:keep]]


# ---------------------------------------------------------------- values


def _values(
    key: str,
    v: torch.Tensor,
    out: dict[str, Any],
    sizer: _Sizer,
    entropy: Entropy,
) -> tuple[dict[str, Any], int]:
    """Encode a 1-D tensor of values; returns (meta, size estimate)."""
    import torch

    dtype = str(v.dtype).removeprefix("torch.")
    n = v.numel()
    if n >= MIN_NUMEL // 4 and dtype in _INT_DTYPES:
        lo, hi = int(v.min()), int(v.max())
        bits = max(1, math.ceil(math.log2(hi - lo + 1)))
        if bits <= min(MAX_SYMBOL_BITS, 8 * v.element_size()):
            sym = (v.to(torch.int64) - lo).numpy()
            meta, est = _symbols(key, sym, bits, out, sizer, entropy)
            return {"codec": "bitpack", "offset": lo, **meta}, est
    if n >= MIN_NUMEL and dtype in _FLOAT_DTYPES and torch.isfinite(v).all():
        palette, inverse = torch.unique(v, sorted=True, return_inverse=True)
        k = palette.numel()
        bits = max(1, math.ceil(math.log2(k))) if k > 1 else 1
        if k <= PALETTE_MAX and k * v.element_size() * 8 + n * bits < n * v.element_size() * 8:
            out[f"{key}.palette"] = palette.contiguous()
            meta, est = _symbols(key, inverse.reshape(-1).numpy(), bits, out, sizer, entropy)
            est += k * v.element_size()
            return {"codec": "palette", "palette": k, **meta}, est
    out[key] = v.contiguous()
    return {"codec": "raw", "count": n}, sizer([_tensor_bytes(v)], n)


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


def _tensor_bytes(t: torch.Tensor) -> bytes:
    import torch

    t = t.contiguous()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return t.numpy().tobytes()


# ---------------------------------------------------------------- tensors


def _fill_value(flat: torch.Tensor) -> tuple[float | int, int] | None:
    """(fill value, how many elements equal it), if a sparse layout is worth trying."""
    import torch

    n = flat.numel()
    zeros = n - int(torch.count_nonzero(flat))
    if zeros / n >= SPARSE_MIN_FRACTION:
        return (0 if not flat.dtype.is_floating_point else 0.0), zeros
    if flat.dtype.is_floating_point or flat.dtype == torch.bool:
        return None
    lo, hi = int(flat.min()), int(flat.max())
    if hi - lo >= (1 << 16):
        return None
    counts = torch.bincount(flat.to(torch.int64) - lo)
    mode = int(torch.argmax(counts))
    if int(counts[mode]) / n >= SPARSE_MIN_FRACTION:
        return mode + lo, int(counts[mode])
    return None


def encode(
    name: str,
    t: torch.Tensor,
    out: dict[str, Any],
    *,
    level: int = 19,
    entropy: Entropy = "auto",
) -> dict[str, Any]:
    """Encode one tensor into ``out`` (stream name -> tensor/array); returns its manifest entry.

    Dense and (when enough elements equal one value) sparse layouts are both built and
    the one whose streams compress smaller is kept; ``compressed_bytes`` is that
    estimate (this tensor's streams zstd-compressed alone).
    """
    import torch

    t = t.detach().contiguous().cpu()
    entry: dict[str, Any] = {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape)}
    flat = t.reshape(-1)
    numel = flat.numel()
    sizer = _Sizer(level)
    if numel < MIN_NUMEL or entry["dtype"] not in (*_INT_DTYPES, *_FLOAT_DTYPES):
        out[f"{name}::values"] = flat
        entry.update(encoding="dense", values={"codec": "raw", "count": numel})
        entry["compressed_bytes"] = sizer([_tensor_bytes(flat)], numel)
        return _finish(name, entry, out)

    candidates: list[tuple[int, dict[str, Any], dict[str, Any]]] = []
    dense_out: dict[str, Any] = {}
    meta, est = _values(f"{name}::values", flat, dense_out, sizer, entropy)
    candidates.append((est, {"encoding": "dense", "values": meta}, dense_out))

    fill = _fill_value(flat)
    if fill is not None:
        keep = flat != fill[0]
        pos = torch.nonzero(keep).reshape(-1).numpy()
        sparse_out: dict[str, Any] = {}
        vmeta, v_est = _values(f"{name}::values", flat[keep], sparse_out, sizer, entropy)
        # positions: bitmask or index deltas, whichever measures smaller
        mask_out = {f"{name}::positions": bitpack(keep.numpy().astype("int64"), 1)}
        mask_est = sizer([mask_out[f"{name}::positions"].tobytes()], numel)
        pmeta: dict[str, Any] = {"codec": "bitmask", "bits": 1, "count": numel, "entropy": "none"}
        for bits in _delta_bit_candidates(pos):
            delta_out: dict[str, Any] = {}
            dmeta, d_est = _symbols(
                f"{name}::positions", delta_symbols(pos, bits), bits, delta_out, sizer, entropy
            )
            if d_est < mask_est:
                mask_out, mask_est, pmeta = delta_out, d_est, {"codec": "delta", **dmeta}
        sparse_out.update(mask_out)
        candidates.append(
            (
                v_est + mask_est,
                {"encoding": "sparse", "fill": fill[0], "positions": pmeta, "values": vmeta},
                sparse_out,
            )
        )
    est, chosen, streams = min(candidates, key=lambda c: c[0])
    out.update(streams)
    entry.update(chosen)
    entry["compressed_bytes"] = int(est)
    if chosen["values"].get("codec") in ("bitpack", "palette"):
        entry["bits"] = chosen["values"]["bits"]
    return _finish(name, entry, out)


def _finish(name: str, entry: dict[str, Any], out: dict[str, Any]) -> dict[str, Any]:
    import torch

    keys = sorted(k for k in out if k.startswith(f"{name}::"))
    for k in keys:
        if not isinstance(out[k], torch.Tensor):
            out[k] = torch.from_numpy(out[k] if out[k].flags.writeable else out[k].copy())
    entry["streams"] = [k.removeprefix(f"{name}::") for k in keys]
    entry["stored_bytes"] = sum(out[k].numel() * out[k].element_size() for k in keys)
    return entry


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
