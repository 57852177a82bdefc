"""The packer's work and memory are linear in the tensor and every choice is encoded once.

No timings here (a shared runner is noisy; ``benchmarks/packing.py`` measures CPU time
against zstd and torch.save): these count what cannot vary from run to run, the streams
written and the bytes numpy allocates (tracemalloc sees numpy's buffers).
"""

from __future__ import annotations

import tracemalloc

import pytest
import torch

from ci_compress.packing import encoding


def _pruned_int8(n: int, density: float = 0.1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, generator=g)
    q = torch.clamp(torch.round(w / w.abs().max() * 127), -127, 127).to(torch.int8)
    keep = torch.rand(n, generator=g) < density
    return torch.where(keep, q, torch.zeros_like(q))


def _clustered(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, generator=g)
    idx = torch.bucketize(w, torch.linspace(-2.5, 2.5, 14)) + 1
    return torch.where(torch.rand(n, generator=g) < 0.1, idx, 0).to(torch.uint8)


@pytest.mark.parametrize("make", [_pruned_int8, _clustered])
def test_each_stream_is_encoded_once(monkeypatch: pytest.MonkeyPatch, make) -> None:
    calls: list[str] = []
    real = encoding.write_symbols

    def counting(plan, symbols, chunks):  # type: ignore[no-untyped-def]
        calls.append(plan.coder)
        return real(plan, symbols, chunks)

    monkeypatch.setattr(encoding, "write_symbols", counting)
    enc = encoding.encode(make(1 << 18))
    streams = [m for m in (enc.entry.get("positions"), enc.entry["values"]) if m and "coder" in m]
    assert len(calls) == len(streams) == 2  # positions and values, nothing encoded twice
    assert enc.entry["layout"] == "sparse"


def _dense_int8(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.clamp(torch.round(torch.randn(n, generator=g) * 30), -127, 127).to(torch.int8)


# numpy's bytes per element at the peak, 1M elements (tracemalloc; torch.bincount's own
# work is not numpy's, and it allocates only its 256 counts). Encoding keeps the coded
# streams (1 byte per element dense); decoding, the tensor it returns (1 byte per element).
# A dense int8 tensor held 3.0 and 2.0 before its histogram went to torch.bincount and its
# symbols were shifted in place; a sparse one 3.8 and 3.3 before the gaps were computed
# without copies and the keep mask (1 byte per element) was packed to bits before planning.
ENCODE_PEAK = {"_dense_int8": 1.5, "_pruned_int8": 2.6, "_clustered": 2.6}
DECODE_PEAK = {"_dense_int8": 1.5, "_pruned_int8": 2.4, "_clustered": 2.4}


@pytest.mark.parametrize("make", [_dense_int8, _pruned_int8, _clustered])
def test_encoding_memory_is_linear_and_small(make) -> None:
    peaks = {}
    for n in (1 << 18, 1 << 20):
        t = make(n)
        tracemalloc.start()
        encoding.encode(t)
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    per_element = peaks[1 << 20] / (1 << 20)
    assert per_element < ENCODE_PEAK[make.__name__], per_element
    assert peaks[1 << 20] / peaks[1 << 18] < 4.4, peaks  # linear: 4x the elements


@pytest.mark.parametrize("make", [_dense_int8, _pruned_int8, _clustered])
def test_decoding_memory_is_linear_and_small(make) -> None:
    peaks = {}
    for n in (1 << 18, 1 << 20):
        t = make(n)
        enc = encoding.encode(t)
        data = b"".join(bytes(memoryview(c).cast("B")) for c in enc.chunks)
        at = [0]

        def read(k: int, data: bytes = data, at: list[int] = at) -> bytes:
            at[0] += k
            return data[at[0] - k : at[0]]

        tracemalloc.start()
        back = encoding.decode("w", enc.entry, read)
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert torch.equal(back, t)
    assert peaks[1 << 20] / (1 << 20) < DECODE_PEAK[make.__name__], peaks
    assert peaks[1 << 20] / peaks[1 << 18] < 4.4, peaks
