"""Tensor encodings of the packed format (version 3), generic over tensors (never over module types).

Every tensor a layer codec hands to the packer is encoded here by looking only at its
dtype, shape and values, so a pass that adds a module type (k-means clustered layers
storing uint8 indices plus a codebook, fp16 layers, low-rank factors) gets the same
encodings without touching this file. The encodings follow Deep Compression (Han et
al., 2016): sparse storage with relative indices, small integers stored as symbols of
the alphabet they really use, and entropy coding of the quantized values and indices.

Values are handled as integers: integer tensors as they are, float tensors as their bit
patterns (NaN payloads round-trip exactly). A tensor is stored

* ``dense`` or ``sparse``: in ``sparse`` the elements equal to ``fill`` (0.0 for floats,
  either sign, read back as +0.0; the most frequent integer, e.g. the cluster index
  holding the pruned zeros) are left out and the others' positions are stored as a **mask** (one bit
  per element, packed into bytes) or as **gaps** (the distance to the previous kept
  element; a gap of ``2**bits - 1`` or more is split by filler symbols ``0`` that each
  advance ``2**bits - 1`` positions, Deep Compression's zero padding);
* its values as ``int`` (integers minus ``offset``), ``palette`` (a float tensor with at
  most 256 distinct values: those values plus an index per element) or ``raw`` (the
  bytes, byte planes shuffled for floats so zstd sees the exponent bytes together).

Each integer symbol stream (values, palette indices, mask bytes, gaps) is then coded
either with **rANS** (``constriction``'s ANS coder, a frequency table beside the words:
within a fraction of a percent of the stream's order-0 entropy; for a value stream of at
most 16 symbols, optionally ``ans1``: a table per value of the element's left neighbour,
see :func:`plan_context`) or as plain **bytes**
left to the payload's zstd (whose Huffman-coded literals are within about 1% of the
entropy of high-entropy byte streams such as dense int8 weights, at a tenth of the
cost). Every choice (dense or sparse, mask or gaps and the gap width, ANS or bytes) is
made once, from histograms, by the size each option is estimated to take; only the
chosen one is encoded. Work and temporary memory are linear in the tensor's elements.

The decoder checks every count, range and length against the manifest entry and the
tensor's shape, and raises :class:`ArtifactError` on anything that does not add up.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from ci_compress.errors import ArtifactError

if TYPE_CHECKING:
    import numpy as np
    import torch

Entropy = Literal["auto", "none", "ans"]
Read = Callable[[int], bytes]

SPARSE_MIN_FRACTION = 0.25  # fill elements needed before a sparse layout is considered
MIN_NUMEL = 64  # smaller tensors are stored raw: their encoding would cost more than it saves
PALETTE_MAX = 256
ANS_MIN_SYMBOLS = 16  # shorter symbol streams are stored as bytes
ANS_MAX_ALPHABET = 4096
ANS_MAX_PRECISION = 16  # frequency tables sum to 2**precision
BYTES_SLACK = 1.01  # bytes (zstd) is kept when estimated within 1% of ANS: it is ~10x faster
BYTES_MIN_ENTROPY = 5.5  # bits per symbol below which zstd is not trusted to reach Huffman
# A value stream of at most this many symbols (k-means indices, small palettes) may be
# coded with its left neighbour in the row as context ("ans1"); chains of neighbours are
# cut every CONTEXT_RUN columns, so decoding takes at most CONTEXT_RUN vectorised steps.
CONTEXT_MAX_ALPHABET = 16
CONTEXT_RUN = 32
CONTEXT_GAIN = 0.98  # chosen when estimated at most 98% of order-0 rANS, tables included
CONTEXT_SAMPLE = 1 << 14  # a stream 4x longer is tried on its first symbols before the whole
GAP_BITS = tuple(range(1, 13))
CHUNK = 1 << 20  # symbols per ANS call and per decode step (bounds temporary memory)
_HIST_CHUNK = 1 << 16  # elements per np.bincount call (it makes an int64 copy of its input)
_SAMPLE = 4096  # elements looked at before a float tensor's palette is built

_INT_DTYPES = ("bool", "int8", "uint8", "int16", "int32", "int64")
_FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")


# ---------------------------------------------------------------- dtypes


def _kind(dtype: str) -> str:
    if dtype in _INT_DTYPES:
        return "int"
    if dtype in _FLOAT_DTYPES:
        return "float"
    return "bytes"


def _view_dtype(dtype: str, itemsize: int) -> Any:
    """The numpy dtype a tensor's elements are handled as (float: unsigned bit pattern)."""
    import numpy as np

    if dtype == "bool":
        return np.dtype(np.uint8)
    if dtype in _INT_DTYPES:
        return np.dtype(dtype)
    if dtype in _FLOAT_DTYPES:
        return np.dtype(f"<u{itemsize}")
    return np.dtype(np.uint8)


def _to_numpy(flat: torch.Tensor) -> np.ndarray:
    """A 1-D contiguous tensor as a numpy array of its view dtype (no copy)."""
    import torch

    dtype = str(flat.dtype).removeprefix("torch.")
    if dtype == "bool":
        return flat.view(torch.uint8).numpy()
    if dtype in _INT_DTYPES:
        return flat.numpy()
    if dtype in _FLOAT_DTYPES:
        signed = {2: torch.int16, 4: torch.int32, 8: torch.int64}[flat.element_size()]
        return flat.view(signed).numpy().view(_view_dtype(dtype, flat.element_size()))
    return flat.view(torch.uint8).numpy()


def _to_torch(arr: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    import numpy as np
    import torch

    name = str(dtype).removeprefix("torch.")
    if name == "bool":
        return torch.from_numpy(arr.view(np.uint8)).view(torch.bool)
    if name in _INT_DTYPES:
        return torch.from_numpy(arr)
    signed = {1: np.int8, 2: np.int16, 4: np.int32, 8: np.int64}[arr.dtype.itemsize]
    return torch.from_numpy(arr.view(signed)).view(dtype)


# ---------------------------------------------------------------- size estimates


def entropy_bits(hist: np.ndarray) -> float:
    """Order-0 entropy of a histogram, in bits for all its symbols together."""
    import numpy as np

    c = hist[hist > 0].astype(np.float64)
    n = c.sum()
    return float((c * np.log2(n / c)).sum()) if n else 0.0


def huffman_bits(hist: np.ndarray) -> int:
    """Bits a Huffman code built on this histogram takes (zstd's literal coder, roughly).

    The two-queue construction over the sorted counts: merged nodes come out in
    non-decreasing order, so the two smallest weights are always at the heads of the
    leaves and of the merged nodes (no heap; a fifth of the time on 256 symbols).
    """
    import numpy as np

    leaves: list[int] = np.sort(hist[hist > 0]).tolist()
    if len(leaves) <= 1:
        return int(sum(leaves))  # zstd still spends about a bit per symbol on a constant block
    merged: list[int] = []
    i = j = total = 0
    for _ in range(len(leaves) - 1):
        pair = 0
        for _ in range(2):  # the smaller head, twice
            if j >= len(merged) or (i < len(leaves) and leaves[i] <= merged[j]):
                pair += leaves[i]
                i += 1
            else:
                pair += merged[j]
                j += 1
        merged.append(pair)
        total += pair  # every merge adds one bit to each symbol below it
    return int(total)


def _precision(n: int, present: int) -> int:
    return max(min(ANS_MAX_PRECISION, max(8, n.bit_length())), present.bit_length() + 1)


def quantize_frequencies(hist: np.ndarray, precision: int) -> np.ndarray:
    """Integer frequencies summing to ``2**precision``, every present symbol at least 1."""
    import numpy as np

    hist = np.asarray(hist, dtype=np.int64)
    total = int(hist.sum())
    m = 1 << precision
    f = (hist * m) // max(total, 1)
    f[(hist > 0) & (f == 0)] = 1
    diff = m - int(f.sum())
    order = np.argsort(-f, kind="stable")
    if diff > 0:
        f[order[0]] += diff
    elif diff < 0:
        # what each symbol (largest first) can give up; an absent symbol (0) gives nothing
        give = np.maximum(f[order] - 1, 0)
        spare = np.cumsum(give)
        take = np.minimum(give, np.maximum(0, -diff - (spare - give)))
        f[order] -= take
    if int(f.sum()) != m or (f[hist > 0] < 1).any():
        raise ValueError("cannot normalise the frequency table")
    return f


def _varints(values: np.ndarray) -> bytes:
    """Non-negative integers (< 2**28) as LEB128 bytes, vectorised."""
    import numpy as np

    v = np.asarray(values, dtype=np.int64)
    n = 1 + (v >= 1 << 7) + (v >= 1 << 14) + (v >= 1 << 21)
    ends = np.cumsum(n)
    out = np.zeros(int(ends[-1]) if v.size else 0, dtype=np.uint8)
    starts = ends - n
    for k in range(4):
        has = n > k
        byte = (v[has] >> (7 * k)) & 0x7F
        more = (n[has] > k + 1).astype(np.uint8) << 7
        out[starts[has] + k] = byte.astype(np.uint8) | more
    return out.tobytes()


def _varints_len(values: np.ndarray) -> int:
    import numpy as np

    v = np.asarray(values)
    return int(v.size + (v >= 1 << 7).sum() + (v >= 1 << 14).sum() + (v >= 1 << 21).sum())


def _read_varints(data: bytes, count: int | None, limit: int) -> list[int]:
    out: list[int] = []
    v = shift = 0
    for b in data:
        v |= (b & 0x7F) << shift
        shift += 7
        if shift > 35 or v > limit:
            raise ValueError("frequency table entry out of range")
        if not b & 0x80:
            out.append(v)
            v = shift = 0
    if shift or (count is not None and len(out) != count):
        raise ValueError(f"frequency table has {len(out)} entries, the manifest says {count}")
    return out


@dataclass
class SymbolPlan:
    """How one symbol stream will be coded, chosen from its histogram alone."""

    coder: str  # "ans" | "bytes"
    count: int
    alphabet: int
    est_bytes: int
    entropy_bits: float
    precision: int = 0
    freqs: np.ndarray | None = None  # ans1: one table per context, [alphabet + 1, alphabet]
    precisions: list[int] | None = None  # ans1: each context's (0: no symbol has it)


def plan_symbols(hist: np.ndarray | None, count: int, alphabet: int, mode: Entropy) -> SymbolPlan:
    """Choose ANS or bytes for a stream of ``count`` symbols in ``[0, alphabet)``."""
    width = _width(alphabet)
    if hist is None:
        return SymbolPlan("bytes", count, alphabet, count * width, 8.0 * count * width)
    h = entropy_bits(hist)
    if width == 1 and h >= BYTES_MIN_ENTROPY * count:
        bytes_est = (huffman_bits(hist) + 7) // 8 + min(alphabet, 256) // 2
    else:  # zstd's matches cost more than they save on low-entropy i.i.d. bytes (+25-35%)
        bytes_est = count * width
    ans_ok = (
        mode != "none"
        and count >= ANS_MIN_SYMBOLS
        and alphabet <= ANS_MAX_ALPHABET
        and int((hist > 0).sum()) > 1
    )
    if ans_ok:
        precision, freqs, coded = _ans_table(hist, count)
        ans_est = math.ceil(coded / 32) * 4 + 4 + _varints_len(freqs)
        if mode == "ans" or bytes_est > BYTES_SLACK * ans_est:
            return SymbolPlan("ans", count, alphabet, ans_est, h, precision, freqs)
    return SymbolPlan("bytes", count, alphabet, bytes_est, h)


def _ans_table(hist: np.ndarray, count: int) -> tuple[int, np.ndarray, float]:
    """(precision, quantized frequencies, coded bits) of rANS on ``count`` symbols."""
    import numpy as np

    precision = _precision(count, int((hist > 0).sum()))
    freqs = quantize_frequencies(hist, precision)
    nz = hist > 0
    return precision, freqs, float((hist[nz] * (precision - np.log2(freqs[nz]))).sum())


def _width(alphabet: int) -> int:
    for w in (1, 2, 4, 8):
        if alphabet <= 1 << (8 * w):
            return w
    raise ValueError(f"alphabet of {alphabet} symbols")


# ---------------------------------------------------------------- symbol streams


def _ans_model(freqs: np.ndarray, precision: int) -> Any:
    import constriction
    import numpy as np

    probs = freqs.astype(np.float64) / float(1 << precision)
    return constriction.stream.model.Categorical(probs, perfect=False)


def write_symbols(
    plan: SymbolPlan, symbols: Callable[[int, int], np.ndarray], chunks: list[Any]
) -> dict[str, Any]:
    """Code a symbol stream as planned; ``symbols(i, j)`` gives symbols ``i..j`` (ints)."""
    import numpy as np

    n = plan.count
    meta: dict[str, Any] = {"count": n, "alphabet": plan.alphabet}
    if plan.coder == "bytes":
        width = _width(plan.alphabet)
        # copy=False: the symbols are a fresh array already (the chunk of a 1M-weight int8
        # layer was copied once more, 1 MB beside it, while the file was written)
        parts = [
            symbols(i, min(n, i + CHUNK)).astype(f"<u{width}", copy=False)
            for i in range(0, n, CHUNK)
        ]
        chunks.extend(parts)
        return meta | {"coder": "bytes"}
    import constriction

    assert plan.freqs is not None
    model = _ans_model(plan.freqs, plan.precision)
    coder = constriction.stream.stack.AnsCoder()
    starts = list(range(0, n, CHUNK))
    for i in reversed(starts):  # a stack: the first chunk is pushed last, popped first
        coder.encode_reverse(symbols(i, min(n, i + CHUNK)).astype(np.int32), model)
    return (
        meta
        | {"coder": "ans", "precision": plan.precision}
        | _ans_stream(coder, _varints(plan.freqs), chunks)
    )


def _ans_stream(coder: Any, table: bytes, chunks: list[Any]) -> dict[str, int]:
    """Append a coded stream (its table, then its words) to ``chunks``; their sizes."""
    words = coder.get_compressed()
    chunks += [table, words.astype("<u4")]
    return {"table": len(table), "words": int(words.size)}


def _ans_decoder(meta: dict[str, Any], read: Read, count: int) -> Any:
    """The stream's words (read even when ``count`` is 0) as a decoder; None for none."""
    import constriction
    import numpy as np

    words = np.frombuffer(read(4 * _nonneg(meta["words"])), dtype="<u4").astype(np.uint32)
    if count == 0:
        return None
    if words.size == 0:
        raise ValueError("empty ANS stream")
    return constriction.stream.stack.AnsCoder(words)


def _drained(coder: Any) -> None:
    if not coder.is_empty():
        raise ValueError("ANS stream has words left over")


def symbol_stream_bytes(meta: dict[str, Any]) -> int:
    """Payload bytes a symbol stream's manifest entry claims."""
    if meta.get("coder") in ("ans", "ans1"):
        return _nonneg(meta["table"]) + 4 * _nonneg(meta["words"])
    return _nonneg(meta["count"]) * _width(_nonneg(meta["alphabet"]))


def read_symbols(
    meta: dict[str, Any],
    read: Read,
    max_count: int,
    out_dtype: Any,
    offset: int = 0,
    rows: Rows | None = None,
) -> np.ndarray:
    """Decode a symbol stream into ``out_dtype`` (adding ``offset``), checking its header.

    ``rows``: where a value stream's symbols sit in their tensor, which an ``ans1``
    stream (left-neighbour context) needs; other streams have none.
    """
    import numpy as np

    n = _nonneg(meta["count"])
    alphabet = _nonneg(meta["alphabet"])
    if n > max_count:
        raise ValueError(f"{n} symbols where at most {max_count} fit")
    if not 1 <= alphabet <= 1 << 20:
        raise ValueError(f"alphabet of {alphabet} symbols")
    out = np.empty(n, dtype=out_dtype)
    lo, hi = _dtype_range(np.dtype(out_dtype))
    if offset < lo or offset + alphabet - 1 > hi:
        raise ValueError(f"symbols {offset}..{offset + alphabet - 1} do not fit {out_dtype}")
    coder = meta.get("coder")
    if coder == "bytes":
        width = _width(alphabet)
        for i in range(0, n, CHUNK):
            j = min(n, i + CHUNK)
            sym = np.frombuffer(read((j - i) * width), dtype=f"<u{width}")
            if sym.size and int(sym.max()) >= alphabet:
                raise ValueError("symbol out of range")
            _shift_into(out[i:j], sym, offset)
        return out
    if coder == "ans1" and rows is not None:
        _read_context_symbols(meta, read, out, alphabet, offset, rows)
        return out
    if coder != "ans":
        raise ValueError(f"unknown symbol coder {coder!r} (a newer ci-compress wrote it?)")

    precision = _nonneg(meta["precision"])
    if not 1 <= precision <= 24 or alphabet > ANS_MAX_ALPHABET:
        raise ValueError(f"bad ANS header (precision {precision}, alphabet {alphabet})")
    freqs = np.array(
        _read_varints(read(_nonneg(meta["table"])), alphabet, 1 << precision), dtype=np.int64
    )
    if int(freqs.sum()) != 1 << precision:
        raise ValueError("frequency table does not sum to its precision")
    coder_ = _ans_decoder(meta, read, n)
    if coder_ is None:
        return out
    model = _ans_model(freqs, precision)
    for i in range(0, n, CHUNK):
        j = min(n, i + CHUNK)
        _shift_into(out[i:j], coder_.decode(model, j - i), offset)
    _drained(coder_)
    return out


# ---------------------------------------------------------------- left-neighbour context


@dataclass
class Rows:
    """Where a value stream's symbols sit: ``pos`` (a sparse stream's sorted positions;
    None for a dense stream, every element in order) in a tensor of rows of ``row``."""

    count: int
    pos: np.ndarray | None
    row: int


def left_links(rows: Rows, start: int, end: int, run: int = CONTEXT_RUN) -> np.ndarray:
    """Which of symbols ``start..end`` have their left neighbour as context.

    A symbol is linked when the element just left of it in the same row of the tensor
    (viewed as ``[rows, row]``) is in the stream too (always in a dense stream; in a
    sparse one when its position is the previous position plus one) and its column is not
    a multiple of ``run``, where chains are cut.
    """
    import numpy as np

    row = max(1, rows.row)
    if rows.pos is None:  # a dense stream: the same pattern in every row (no division)
        pattern = np.arange(row) % run != 0
        first = start % row
        reps = -(-(first + end - start) // row)
        dense: np.ndarray = np.tile(pattern, reps)[first : first + end - start]
        return dense
    where = np.asarray(rows.pos[start:end], dtype=np.int64)
    if row % run == 0 and run & (run - 1) == 0:  # (where % row) % run, without a division
        linked: np.ndarray = where & (run - 1) != 0
    else:
        linked = (where % row) % run != 0
    if where.size:
        linked[1:] &= where[1:] - 1 == where[:-1]
        linked[0] &= start > 0 and int(rows.pos[start - 1]) == int(where[0]) - 1
    return linked


def _blocks(
    rows: Rows, run: int, chunk: int | None = None
) -> Iterator[tuple[int, int, np.ndarray]]:
    """(start, end, links) of blocks of about ``chunk`` (CHUNK) symbols, each starting at
    a chain's head, so each is coded on its own and temporary memory stays bounded."""
    import numpy as np

    chunk = chunk or CHUNK
    s = 0
    while s < rows.count:
        e = min(rows.count, s + chunk)
        linked = left_links(rows, s, min(rows.count, e + 1), run)
        if e < rows.count:
            heads = np.flatnonzero(~linked[1:]) + 1  # chains are at most `run` long
            if not heads.size:
                raise ValueError(f"no chain head in {chunk} symbols (run {run})")
            e = s + int(heads[-1])
        yield s, e, linked[: e - s]
        s = e


def _steps(linked: np.ndarray) -> np.ndarray:
    """Each symbol's distance to the head of its chain (0 for a head): its decoding step."""
    import numpy as np

    i = np.arange(linked.size, dtype=np.int64)
    head = np.maximum.accumulate(np.where(linked, 0, i)) if linked.size else i
    # small unsigned integers: numpy sorts them by radix (stable, linear), not by comparison
    out: np.ndarray = (i - head).astype(np.uint16)
    return out


def _context_of(sym: np.ndarray, linked: np.ndarray, alphabet: int) -> np.ndarray:
    """The left neighbour's symbol for linked symbols, ``alphabet`` (the head context) else."""
    import numpy as np

    prev = np.empty(sym.size, dtype=np.uint8)
    if sym.size:
        prev[0] = alphabet
        prev[1:] = sym[:-1]
    out: np.ndarray = np.where(linked, prev, np.uint8(alphabet))
    return out


def plan_context(
    plan: SymbolPlan, symbols: Callable[[int, int], np.ndarray], rows: Rows
) -> SymbolPlan | None:
    """An ``ans1`` plan (one frequency table per left-neighbour symbol) if it pays.

    It pays where neighbouring weights are alike (a smooth receptive field, a kernel's
    neighbouring taps): chosen when its estimate, tables included, is at most
    ``CONTEXT_GAIN`` of the order-0 stream's.
    """
    import numpy as np

    a = plan.alphabet
    if plan.count > 4 * CONTEXT_SAMPLE:  # first on a sample: most streams stop here
        s, e, linked = next(_blocks(rows, CONTEXT_RUN, CONTEXT_SAMPLE))
        joint = _joint(symbols(s, e), linked, a)
        given = sum(entropy_bits(h) for h in joint)
        if given > (CONTEXT_GAIN + 0.01) * entropy_bits(joint.sum(axis=0)):
            return None
    joint = np.zeros((a + 1, a), dtype=np.int64)
    for s, e, linked in _blocks(rows, CONTEXT_RUN):
        joint += _joint(symbols(s, e), linked, a)
    tables = np.zeros((a + 1, a), dtype=np.int64)
    precisions: list[int] = []
    coded = 0.0
    table_bytes = 0
    for c in range(a + 1):
        h = joint[c]
        n_c = int(h.sum())
        if n_c == 0:
            precisions.append(0)
            table_bytes += 1
            continue
        p, f, bits = _ans_table(h, n_c)
        tables[c] = f
        precisions.append(p)
        coded += bits
        table_bytes += 1 + _varints_len(f)
    est = math.ceil(coded / 32) * 4 + 4 + table_bytes
    if est > CONTEXT_GAIN * plan.est_bytes:
        return None
    return SymbolPlan(
        "ans1", plan.count, a, est, plan.entropy_bits, freqs=tables, precisions=precisions
    )


def _joint(sym: np.ndarray, linked: np.ndarray, alphabet: int) -> np.ndarray:
    """Counts of (context, symbol): a row per context, the head context last."""
    import numpy as np

    sym = sym.astype(np.int64)
    ctx = _context_of(sym, linked, alphabet).astype(np.int64)
    size = (alphabet + 1) * alphabet
    out: np.ndarray = np.bincount(ctx * alphabet + sym, minlength=size).reshape(alphabet + 1, -1)
    return out


def _context_table(plan: SymbolPlan) -> bytes:
    import numpy as np

    assert plan.freqs is not None and plan.precisions is not None
    parts = []
    for c, p in enumerate(plan.precisions):
        parts.append(_varints(np.array([p])))
        if p:
            parts.append(_varints(plan.freqs[c]))
    return b"".join(parts)


def _groups(linked: np.ndarray, ctx: np.ndarray, contexts: int) -> Iterator[np.ndarray]:
    """A block's symbols by (step, context, position): the order they are decoded in."""
    import numpy as np

    key = _steps(linked).astype(np.uint32) * contexts + ctx
    key = key.astype(np.uint16) if contexts * CONTEXT_RUN < 1 << 16 else key
    order = np.argsort(key, kind="stable")
    k = key[order]
    starts = np.flatnonzero(np.r_[True, k[1:] != k[:-1]]) if k.size else np.zeros(0, np.int64)
    ends = np.r_[starts[1:], order.size]
    for s, e in zip(starts, ends, strict=True):
        yield order[s:e]


def write_context_symbols(
    plan: SymbolPlan, symbols: Callable[[int, int], np.ndarray], rows: Rows, chunks: list[Any]
) -> dict[str, Any]:
    """Code the stream as planned by :func:`plan_context`, in the order the decoder reads it."""
    import constriction
    import numpy as np

    assert plan.freqs is not None and plan.precisions is not None
    a = plan.alphabet
    models = {c: _ans_model(plan.freqs[c], p) for c, p in enumerate(plan.precisions) if p}
    coder = constriction.stream.stack.AnsCoder()
    for s, e, linked in reversed(list(_blocks(rows, CONTEXT_RUN))):  # a stack: last first
        sym = symbols(s, e).astype(np.int64)
        ctx = _context_of(sym, linked, a)
        for idx in reversed(list(_groups(linked, ctx, a + 1))):
            coder.encode_reverse(sym[idx].astype(np.int32), models[int(ctx[idx[0]])])
    head = {"count": plan.count, "alphabet": a, "coder": "ans1", "context": "left"}
    return head | {"run": CONTEXT_RUN} | _ans_stream(coder, _context_table(plan), chunks)


def _parse_context_table(data: bytes, alphabet: int) -> list[Any]:
    """One rANS model (or None: no symbol has that context) per context."""
    import numpy as np

    values = _read_varints(data, None, 1 << 24)
    tables: list[Any] = []
    i = 0
    for _ in range(alphabet + 1):
        if i >= len(values):
            raise ValueError("context table is cut short")
        p = values[i]
        i += 1
        if p == 0:
            tables.append(None)
            continue
        if not 1 <= p <= 24 or i + alphabet > len(values):
            raise ValueError(f"bad context table (precision {p})")
        f = np.array(values[i : i + alphabet], dtype=np.int64)
        i += alphabet
        if int(f.sum()) != 1 << p:
            raise ValueError("context frequency table does not sum to its precision")
        tables.append(_ans_model(f, p))
    if i != len(values):
        raise ValueError("context table has entries left over")
    return tables


def _read_context_symbols(
    meta: dict[str, Any], read: Read, out: np.ndarray, alphabet: int, offset: int, rows: Rows
) -> None:
    """Decode an ``ans1`` stream into ``out`` (adding ``offset``), block by block."""
    import numpy as np

    run = _nonneg(meta["run"])
    if meta.get("context") != "left" or not 1 <= run <= 1 << 16:
        raise ValueError(f"unknown symbol context {meta.get('context')!r} (run {run})")
    if alphabet > CONTEXT_MAX_ALPHABET:
        raise ValueError(f"context-coded alphabet of {alphabet} symbols")
    if rows.count != out.size:
        raise ValueError(f"{rows.count} positions for {out.size} context-coded symbols")
    models = _parse_context_table(read(_nonneg(meta["table"])), alphabet)
    coder = _ans_decoder(meta, read, out.size)
    if coder is None:
        return
    for s, e, linked in _blocks(rows, run):
        steps = _steps(linked)
        order = np.argsort(steps, kind="stable")
        bounds = np.searchsorted(steps[order], np.arange(int(steps.max()) + 2))
        sym = np.empty(e - s, dtype=np.uint8)  # alphabet <= CONTEXT_MAX_ALPHABET
        for step in range(bounds.size - 1):
            idx = order[bounds[step] : bounds[step + 1]]
            ctx = np.full(idx.size, alphabet, dtype=np.uint8) if step == 0 else sym[idx - 1]
            by = np.argsort(ctx, kind="stable")
            idx, ctx = idx[by], ctx[by]
            starts = np.flatnonzero(np.r_[True, ctx[1:] != ctx[:-1]])
            for g0, g1 in zip(starts, np.r_[starts[1:], idx.size], strict=True):
                model = models[int(ctx[g0])]
                if model is None:
                    raise ValueError("a symbol's context has no frequency table")
                sym[idx[g0:g1]] = coder.decode(model, int(g1 - g0))
        _shift_into(out[s:e], sym, offset)
    _drained(coder)


def _shift_into(dst: np.ndarray, sym: np.ndarray, offset: int) -> None:
    """``dst[:] = sym + offset`` in place, in ``dst``'s own integer width: the caller has
    checked that every ``sym + offset`` fits it, so the wrap-around of a symbol that does
    not fit on its own (255 into int8 with offset -128) is undone by the addition. No
    temporaries: a dense 1M-weight int8 layer's reload held three copies of it before."""
    dst[...] = sym
    if offset:
        dst += dst.dtype.type(offset)


def _dtype_range(dt: Any) -> tuple[int, int]:
    import numpy as np

    info = np.iinfo(dt)
    return int(info.min), int(info.max)


def _nonneg(v: Any) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise ValueError(f"{v!r} is not a count")
    return v


# ---------------------------------------------------------------- histograms


def int_histogram(v: np.ndarray) -> tuple[int, int, np.ndarray | None]:
    """(min, max, histogram of v - min or None when the range is too wide)."""
    import numpy as np

    if v.size == 0:
        return 0, 0, np.zeros(1, dtype=np.int64)
    if v.dtype.itemsize == 1:
        counts = bincount(v.view(np.uint8), 256)
        if v.dtype == np.int8:  # byte order 0..255 is 0..127, -128..-1: rotate to -128..127
            counts = np.roll(counts, 128)
            base = -128
        else:
            base = 0
        nz = np.flatnonzero(counts)
        lo, hi = int(nz[0]) + base, int(nz[-1]) + base
        return lo, hi, counts[lo - base : hi - base + 1].astype(np.int64)
    lo, hi = int(v.min()), int(v.max())
    if hi - lo >= 1 << 20:
        return lo, hi, None
    counts = np.zeros(hi - lo + 1, dtype=np.int64)
    for i in range(0, v.size, _HIST_CHUNK):
        part = v[i : i + _HIST_CHUNK].astype(np.int64) - lo
        counts += np.bincount(part, minlength=hi - lo + 1)
    return lo, hi, counts


def bincount(v: np.ndarray, minlength: int) -> np.ndarray:
    """Counts of the values of ``v`` (non-negative integers), at least ``minlength`` of them.

    Bytes go to ``torch.bincount``, which counts a uint8 tensor as it is; ``np.bincount``
    first copies its input to int64, 8 bytes per element (the encoder's peak that
    ``tests/unit/packing/test_scaling.py`` pins), and took about twice the time. Wider
    values go to ``np.bincount`` a slice at a time.
    """
    import numpy as np

    if v.dtype == np.uint8 and v.ndim == 1 and v.flags.writeable:
        import torch

        out: np.ndarray = torch.bincount(torch.from_numpy(v), minlength=minlength).numpy()
        return out
    counts = np.zeros(minlength, dtype=np.int64)
    for i in range(0, v.size, _HIST_CHUNK):
        counts += np.bincount(v[i : i + _HIST_CHUNK], minlength=minlength)[:minlength]
    return counts


def _gap_histograms(pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct gaps between kept positions (the first from -1) and their counts."""
    import numpy as np

    d = _gaps(pos, pos.dtype)
    if d.size and int(d.max()) < 1 << 22:
        counts = np.bincount(d)
        vals = np.flatnonzero(counts)
        return vals, counts[vals]
    vals, counts = np.unique(d, return_counts=True)
    return vals, counts


def _gaps(pos: np.ndarray, dtype: Any) -> np.ndarray:
    """Gaps between kept positions, the first from -1, as ``dtype``: ``np.diff(pos,
    prepend=-1)`` without its copy of ``pos`` with -1 in front."""
    import numpy as np

    d = np.empty(pos.size, dtype=dtype)
    if pos.size:
        d[0] = pos[0] + 1
        np.subtract(pos[1:], pos[:-1], out=d[1:], casting="unsafe")
    return d


def _gap_symbol_hist(vals: np.ndarray, counts: np.ndarray, bits: int) -> np.ndarray:
    import numpy as np

    m = (1 << bits) - 1
    k = (vals - 1) // m
    r = vals - k * m
    hist = np.bincount(r, weights=counts, minlength=m + 1).astype(np.int64)
    hist[0] = int((counts * k).sum())
    return hist


def gap_symbols(pos: np.ndarray, bits: int) -> np.ndarray:
    """Deep Compression's relative indices: gaps, fillers (0) for gaps of 2**bits - 1 or more.

    In place where it can be: besides ``pos`` and the result, two arrays of ``pos``'s
    length live at once (the gaps, then the remainders, and the fillers before each)."""
    import numpy as np

    m = (1 << bits) - 1
    small = pos.size == 0 or int(pos[-1]) < 1 << 30
    idt = np.int32 if small else np.int64  # halves the temporaries of tensors under 2**30
    r = _gaps(pos, idt)
    r -= 1
    k = r // m  # fillers before each kept position
    r %= m
    r += 1  # the remainders, 1..m
    out = np.zeros(int(pos.size + k.sum(dtype=np.int64)), dtype=np.int32)
    if out.size >= 1 << 31:
        k = k.astype(np.int64)
    k += 1
    np.cumsum(k, out=k)
    k -= 1
    out[k] = r
    return out


def gap_positions(sym: np.ndarray, bits: int) -> np.ndarray:
    """The positions a gap stream codes. Consumes ``sym`` (int64: overwritten with the
    running position), so only a mask of its length lives beside it and the result."""
    import numpy as np

    m = (1 << bits) - 1
    if sym.dtype != np.int64 or not sym.flags.writeable:
        sym = sym.astype(np.int64)  # not the decoder's own array: a copy to consume
    kept = sym != 0
    np.copyto(sym, m, where=~kept)  # a filler advances by m and keeps nothing
    np.cumsum(sym, out=sym)
    sym -= 1
    out: np.ndarray = sym[kept]
    return out


# ---------------------------------------------------------------- tensors


@dataclass
class Encoded:
    """One tensor's manifest entry, its payload chunks in order, and size figures."""

    entry: dict[str, Any]
    chunks: list[Any] = field(default_factory=list)
    est_bytes: int = 0  # estimated bytes in the payload (after zstd)
    entropy_bits: float = 0.0  # order-0 bound of its streams (raw streams at their size)

    @property
    def stored_bytes(self) -> int:
        return sum(nbytes(c) for c in self.chunks)


def nbytes(c: Any) -> int:
    return len(c) if isinstance(c, bytes | bytearray) else int(c.nbytes)


@dataclass
class _Values:
    """A planned value stream: how the (kept) elements will be written."""

    codec: str  # raw | int | palette
    est_bytes: int
    plan: SymbolPlan | None = None
    offset: int = 0
    palette: np.ndarray | None = None


def encode(t: torch.Tensor, *, entropy: Entropy = "auto") -> Encoded:
    """Encode one tensor: plan every choice from histograms, then encode the chosen one."""
    import numpy as np

    t = t.detach().contiguous().cpu()
    dtype = str(t.dtype).removeprefix("torch.")
    enc = Encoded({"dtype": dtype, "shape": list(t.shape)})
    v = _to_numpy(t.reshape(-1))
    n = int(v.size)
    kind = _kind(dtype)
    if n < MIN_NUMEL or kind == "bytes":
        enc.entry |= {"layout": "dense", "values": {"codec": "raw", "count": t.numel()}}
        enc.chunks.append(v)
        enc.est_bytes = v.nbytes
        enc.entropy_bits = 8.0 * v.nbytes
        return enc

    hist: np.ndarray | None = None
    palette: np.ndarray | None = None
    fill: int | None = None
    if kind == "int":
        lo, hi, hist = int_histogram(v)
        if hist is None:  # a range too wide for symbols: raw bytes
            dense = _Values("raw", _raw_estimate(v))
        else:
            dense = _Values("int", 0, plan_symbols(hist, n, hi - lo + 1, entropy), offset=lo)
            fill, fill_count = lo + int(hist.argmax()), int(hist.max())
    else:
        palette, hist = _palette(v)
        if palette is not None:
            dense = _Values("palette", 0, plan_symbols(hist, n, palette.size, entropy))
            dense.palette = palette
        else:
            dense = _Values("raw", _raw_estimate(v))
        fill, fill_count = 0, n - int(np.count_nonzero(v << v.dtype.type(1)))  # +0.0 and -0.0
    if dense.plan is not None:
        dense.est_bytes = dense.plan.est_bytes

    sparse = None
    if fill is not None and SPARSE_MIN_FRACTION * n <= fill_count < n:
        # floats: -0.0 is left out with +0.0 and comes back as +0.0 (they compare equal)
        keep = v != v.dtype.type(fill) if kind == "int" else (v << v.dtype.type(1)) != 0
        pos = np.flatnonzero(keep)
        mask = np.packbits(keep)  # what the mask codec stores: 1 bit per element, not 8
        del keep
        positions = _plan_positions(mask, pos, entropy)
        values = _sparse_values(kind, v, pos, hist, dense, fill, entropy)
        sparse_est = positions[0] + values.est_bytes
        # within 1% in size, the layout with fewer rANS-coded symbols (cheaper to decode)
        if sparse_est < dense.est_bytes or (
            sparse_est <= BYTES_SLACK * dense.est_bytes
            and _ans_symbols(positions[3], values.plan) < _ans_symbols(dense.plan)
        ):
            sparse = (mask, pos, positions, values)

    if sparse is None:
        enc.est_bytes = dense.est_bytes
        enc.entry["layout"] = "dense"
        enc.entry["values"] = _write_values(dense, v, enc, None, _row(t.shape))
        return enc
    mask, pos, positions, values = sparse
    sparse = None
    enc.est_bytes = positions[0] + values.est_bytes
    enc.entry["layout"] = "sparse"
    enc.entry["fill"] = fill
    enc.entry["positions"] = _write_positions(positions, mask, pos, enc)
    del mask
    enc.entry["values"] = _write_values(values, v[pos], enc, pos, _row(t.shape))
    return enc


def _row(shape: Any) -> int:
    """Elements per row when a tensor is viewed as ``[shape[0], rest]`` (its left neighbours)."""
    dims = tuple(int(d) for d in shape)
    n = math.prod(dims)
    return n // dims[0] if len(dims) >= 2 and dims[0] else max(1, n)


def _ans_symbols(*plans: SymbolPlan | None) -> int:
    return sum(p.count for p in plans if p is not None and p.coder == "ans")


def _sparse_values(
    kind: str,
    v: np.ndarray,
    pos: np.ndarray,
    hist: np.ndarray | None,
    dense: _Values,
    fill: int,
    entropy: Entropy,
) -> _Values:
    """The kept elements' plan, from the dense histogram minus the fill (no new pass)."""
    import numpy as np

    kept = int(pos.size)
    if dense.codec == "raw" or hist is None:
        sample = v[pos[:: max(1, kept // _SAMPLE)]]
        return _Values("raw", _raw_estimate(sample) * kept // max(1, sample.size))
    vh = hist.copy()
    if dense.codec == "int":
        vh[fill - dense.offset] = 0
        nz = np.flatnonzero(vh)
        lo = dense.offset + int(nz[0])
        plan = plan_symbols(vh[nz[0] : nz[-1] + 1], kept, int(nz[-1] - nz[0]) + 1, entropy)
        return _Values("int", plan.est_bytes, plan, offset=lo)
    assert dense.palette is not None
    vh[(dense.palette << dense.palette.dtype.type(1)) == 0] = 0  # +0.0 and -0.0
    plan = plan_symbols(vh, kept, dense.palette.size, entropy)
    return _Values("palette", plan.est_bytes, plan, palette=dense.palette)


def _palette(v: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(sorted distinct bit patterns, their counts) when there are at most PALETTE_MAX."""
    import numpy as np

    sample = np.unique(v[:: max(1, v.size // _SAMPLE)])
    if sample.size > PALETTE_MAX:
        return None, None
    idx = np.minimum(np.searchsorted(sample, v), sample.size - 1)
    missing = sample[idx] != v
    if missing.any():
        extra = np.unique(v[missing][: PALETTE_MAX + 1])
        if sample.size + extra.size > PALETTE_MAX:
            return None, None
        extra = np.unique(v[missing])
        sample = np.union1d(sample, extra)
        if sample.size > PALETTE_MAX:
            return None, None
        idx = np.searchsorted(sample, v)
    palette: np.ndarray = sample
    if palette.size * palette.itemsize * 8 + v.size * 8 >= v.nbytes * 8:
        return None, None  # as large as the raw values: not worth it
    return palette, np.bincount(idx, minlength=palette.size).astype(np.int64)


def _raw_estimate(v: np.ndarray) -> int:
    """Raw values after zstd, estimated from the order-0 entropy of each byte plane."""
    import numpy as np

    if v.size == 0:
        return 0
    sample = np.ascontiguousarray(v[:: max(1, v.size // (16 * _SAMPLE))])
    planes = _shuffle(sample).reshape(v.itemsize, -1)
    bits = sum(entropy_bits(bincount(p, 256)) for p in planes)
    return int(bits / 8 * v.size / planes.shape[1]) + 16


def _shuffle(v: np.ndarray) -> np.ndarray:
    """Byte planes: all first bytes, then all second bytes, ... (blosc's shuffle)."""
    b = v.reshape(-1).view("u1").reshape(-1, v.itemsize)
    out: np.ndarray = b.T.copy().reshape(-1)
    return out


def _unshuffle(data: np.ndarray, itemsize: int, dtype: Any) -> np.ndarray:
    out: np.ndarray = data.reshape(itemsize, -1).T.copy().reshape(-1).view(dtype)
    return out


def _plan_positions(
    mask_bytes: np.ndarray, pos: np.ndarray, entropy: Entropy
) -> tuple[int, str, int, SymbolPlan]:
    """(estimated bytes, "mask" | "gaps", gap bits, plan) with the smallest estimate."""
    mask = plan_symbols(bincount(mask_bytes, 256), mask_bytes.size, 256, entropy)
    options: list[tuple[int, str, int, SymbolPlan]] = [(mask.est_bytes, "mask", 1, mask)]
    vals, counts = _gap_histograms(pos)
    for bits in GAP_BITS:
        hist = _gap_symbol_hist(vals, counts, bits)
        plan = plan_symbols(hist, int(hist.sum()), 1 << bits, entropy)
        options.append((plan.est_bytes, "gaps", bits, plan))
    # within 1% of the smallest, the one with the fewest rANS-coded symbols (decode cost)
    smallest = min(o[0] for o in options)
    near = [o for o in options if o[0] <= BYTES_SLACK * smallest]
    return min(near, key=lambda o: (_ans_symbols(o[3]), o[0]))


def _write_positions(
    planned: tuple[int, str, int, SymbolPlan],
    mask_bytes: np.ndarray,
    pos: np.ndarray,
    enc: Encoded,
) -> dict[str, Any]:
    _, codec, bits, plan = planned
    enc.entropy_bits += plan.entropy_bits
    if codec == "mask":
        return {"codec": "mask"} | write_symbols(plan, lambda i, j: mask_bytes[i:j], enc.chunks)
    gaps = gap_symbols(pos, bits)
    return {"codec": "gaps", "bits": bits} | write_symbols(plan, lambda i, j: gaps[i:j], enc.chunks)


def _write_values(
    planned: _Values, v: np.ndarray, enc: Encoded, pos: np.ndarray | None, row: int
) -> dict[str, Any]:
    """Write the values ``v`` (all elements, or the kept ones at ``pos``) as planned.

    A small-alphabet rANS stream is coded with each value's left neighbour as context
    (``ans1``) when :func:`plan_context` estimates that pays.
    """
    import numpy as np

    def coded(plan: SymbolPlan, symbols: Callable[[int, int], np.ndarray]) -> dict[str, Any]:
        if plan.coder == "ans" and plan.alphabet <= CONTEXT_MAX_ALPHABET:
            rows = Rows(plan.count, pos, row)
            ctx_plan = plan_context(plan, symbols, rows)
            if ctx_plan is not None:
                enc.est_bytes += ctx_plan.est_bytes - plan.est_bytes
                return write_context_symbols(ctx_plan, symbols, rows, enc.chunks)
        return write_symbols(plan, symbols, enc.chunks)

    n = int(v.size)
    if planned.codec == "raw":
        enc.chunks.append(_shuffle(v) if v.itemsize > 1 else v)
        enc.entropy_bits += 8.0 * v.nbytes
        return {"codec": "raw", "count": n, "shuffle": v.itemsize > 1}
    plan = planned.plan
    assert plan is not None
    enc.entropy_bits += plan.entropy_bits
    if planned.codec == "palette":
        pal = planned.palette
        assert pal is not None
        enc.chunks.append(pal.copy())
        meta = coded(plan, lambda i, j: np.searchsorted(pal, v[i:j]))
        return {"codec": "palette", "palette": int(pal.size)} | meta
    lo = planned.offset

    def symbols(i: int, j: int) -> np.ndarray:
        if v.dtype.itemsize == 1:
            return v[i:j].view(np.uint8) - np.uint8(lo & 0xFF)  # (v - lo) mod 256 = v - lo
        return v[i:j].astype(np.int64) - lo

    return {"codec": "int", "offset": lo} | coded(plan, symbols)


# ---------------------------------------------------------------- decoding


def tensor_header(name: str, entry: dict[str, Any]) -> tuple[torch.dtype, tuple[int, ...], int]:
    """(dtype, shape, element count) of a manifest entry, or ArtifactError."""
    import torch

    try:
        shape = tuple(_nonneg(s) for s in entry["shape"])
        dtype = getattr(torch, str(entry["dtype"]))
        if not isinstance(dtype, torch.dtype):
            raise TypeError(entry["dtype"])
    except (KeyError, TypeError, ValueError, AttributeError):
        raise ArtifactError(f"tensor {name}: bad dtype or shape in the manifest") from None
    return dtype, shape, math.prod(shape)


def entry_bytes(name: str, entry: dict[str, Any]) -> int:
    """Payload bytes a tensor's manifest entry claims (checked before anything is read)."""
    dtype, _, numel = tensor_header(name, entry)
    itemsize = _itemsize(dtype)
    try:
        total = 0
        if entry.get("layout") == "sparse":
            total += symbol_stream_bytes(entry["positions"])
        values = entry["values"]
        codec = values.get("codec")
        if codec == "raw":
            total += _nonneg(values["count"]) * itemsize
        elif codec in ("int", "palette"):
            total += symbol_stream_bytes(values)
            if codec == "palette":
                total += _nonneg(values["palette"]) * itemsize
        else:
            raise ArtifactError(
                f"tensor {name}: unknown value codec {codec!r}",
                hint="upgrade ci-compress to the version that wrote the file",
            )
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ArtifactError(f"tensor {name}: bad manifest entry ({e})") from None
    if numel and total == 0 and entry.get("layout") != "sparse":
        raise ArtifactError(f"tensor {name}: no stored values for {numel} elements")
    return total


def _itemsize(dtype: torch.dtype) -> int:
    import torch

    return torch.empty((), dtype=dtype).element_size()


def decode(name: str, entry: dict[str, Any], read: Read) -> torch.Tensor:
    """Rebuild one tensor from its manifest entry, reading its streams with ``read``.

    Raises ArtifactError for anything inconsistent (counts, ranges, lengths, shape).
    """
    import numpy as np

    dtype, shape, numel = tensor_header(name, entry)
    name_ = str(dtype).removeprefix("torch.")
    itemsize = _itemsize(dtype)
    view = _view_dtype(name_, itemsize)
    layout = entry.get("layout")
    try:
        if layout == "dense":
            rows = Rows(numel, None, _row(shape))
            out = _read_values(entry["values"], numel, view, itemsize, _kind(name_), read, rows)
            if out.size != numel * (itemsize if _kind(name_) == "bytes" else 1):
                raise ValueError(f"{out.size} values for {numel} elements")
        elif layout == "sparse":
            fill = entry["fill"]
            lo, hi = _dtype_range(view)
            if not isinstance(fill, int) or not lo <= fill <= hi:
                raise ValueError(f"fill {fill!r} does not fit {name_}")
            pmeta = entry["positions"]
            kept = _nonneg(entry["values"]["count"])
            if pmeta.get("codec") == "mask":
                nbytes = (numel + 7) // 8
                if pmeta.get("count") != nbytes:
                    raise ValueError("mask length does not match the shape")
                mask_bytes = read_symbols(pmeta, read, nbytes, np.uint8)
                where = np.unpackbits(mask_bytes, count=numel).view(bool)
                got = int(np.count_nonzero(where))
            elif pmeta.get("codec") == "gaps":
                bits = _nonneg(pmeta["bits"])
                if bits not in GAP_BITS or pmeta.get("alphabet") != 1 << bits:
                    raise ValueError(f"bad gap width {bits}")
                sym = read_symbols(pmeta, read, numel, np.int64)
                if sym.size and sym[-1] == 0:
                    raise ValueError("gap stream ends in a filler")
                where = gap_positions(sym, bits)
                del sym
                got = int(where.size)
                if got and int(where[-1]) >= numel:
                    raise ValueError("a position lies outside the tensor")
            else:
                raise ValueError(f"unknown position codec {pmeta.get('codec')!r}")
            if got != kept:
                raise ValueError(f"{got} positions for {kept} values")
            rows = None
            if entry["values"].get("coder") == "ans1":  # its contexts need the positions
                at = np.flatnonzero(where) if where.dtype == bool else where
                rows = Rows(kept, at, _row(shape))
            values = _read_values(entry["values"], kept, view, itemsize, "sparse", read, rows)
            out = np.full(numel, fill, dtype=view)
            out[where] = values
            del where, values  # before the caller builds its module from out
        else:
            raise ArtifactError(
                f"tensor {name}: unknown layout {layout!r}",
                hint="upgrade ci-compress to the version that wrote the file",
            )
    except (KeyError, TypeError, ValueError, IndexError, OverflowError, RuntimeError) as e:
        raise ArtifactError(
            f"tensor {name}: cannot decode ({e}); the packed file is corrupt"
        ) from None
    if _kind(name_) == "bytes":
        import torch

        return torch.from_numpy(out.copy()).view(dtype).reshape(shape)
    if name_ == "bool" and out.size and int(out.max()) > 1:
        raise ArtifactError(f"tensor {name}: a bool tensor holds values other than 0 and 1")
    return _to_torch(out, dtype).reshape(shape)


def _read_values(
    meta: dict[str, Any],
    count: int,
    view: Any,
    itemsize: int,
    kind: str,
    read: Read,
    rows: Rows | None = None,
) -> np.ndarray:
    import numpy as np

    codec = meta.get("codec")
    if codec == "raw":
        if _nonneg(meta["count"]) != count:
            raise ValueError(f"{meta['count']} raw values, {count} expected")
        data = np.frombuffer(read(count * itemsize), dtype=np.uint8)
        if kind == "bytes":
            return data.copy()
        if meta.get("shuffle") and itemsize > 1:
            return _unshuffle(data, itemsize, view)
        raw: np.ndarray = data.view(view).copy()
        return raw
    if _nonneg(meta["count"]) != count:
        raise ValueError(f"{meta['count']} values, {count} expected")
    if codec == "int":
        offset = meta["offset"]
        if not isinstance(offset, int) or isinstance(offset, bool):
            raise ValueError("bad offset")
        return read_symbols(meta, read, count, view, offset, rows)
    if codec == "palette":
        k = _nonneg(meta["palette"])
        if not 1 <= k <= PALETTE_MAX or meta.get("alphabet") != k:
            raise ValueError(f"palette of {k} values")
        palette = np.frombuffer(read(k * itemsize), dtype=view)
        idx = read_symbols(meta, read, count, np.int64, 0, rows)
        out: np.ndarray = palette[idx]
        return out
    raise ValueError(f"unknown value codec {codec!r}")
