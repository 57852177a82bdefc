"""Cluster-index tensors as a clustering pass leaves them, and a reader over an encoded
tensor's chunks, for the packer's tests and ``benchmarks/context_coding.py``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def chunk_reader(enc: Any) -> Callable[[int], bytes]:
    """``read(n)`` over an encoded tensor's chunks, as the payload reader gives them."""
    data = b"".join(bytes(memoryview(c).cast("B")) for c in enc.chunks)
    at = [0]

    def read(n: int) -> bytes:
        at[0] += n
        return data[at[0] - n : at[0]]

    return read


def clustered_sparse(kind: str, shape=(512, 1024), density: float = 0.1, seed: int = 0):
    """4-bit cluster indices (uint8, 0 = the pruned-zero cluster), ~90% zeros.

    ``uniform``: kept positions random, the 15 other clusters equally likely (the worst
    case for entropy coding); ``gaussian``: Gaussian weights pruned by magnitude and
    the survivors assigned to 15 linearly spaced centroids (Deep Compression's linear
    initialisation), so cluster use is uneven as in real layers.
    """
    g = torch.Generator().manual_seed(seed)
    numel = shape[0] * shape[1]
    if kind == "uniform":
        keep = torch.rand(numel, generator=g) < density
        idx = torch.randint(1, 16, (numel,), generator=g)
    else:
        w = torch.randn(numel, generator=g)
        keep = w.abs() >= w.abs().quantile(1 - density)
        cent = torch.linspace(float(w[keep].min()), float(w[keep].max()), 15)
        idx = (w[:, None] - cent[None]).abs().argmin(1) + 1
    return torch.where(keep, idx, torch.zeros_like(idx)).to(torch.uint8).reshape(shape)


def smooth_clustered(shape=(256, 784), density: float | None = 0.1, seed: int = 0):
    """3-bit cluster indices of a smooth weight field (neighbouring columns alike, as a
    first layer's receptive fields over pixels), pruned by magnitude when ``density``."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g).cumsum(1)  # a random walk along each row
    w = w - w.mean(1, keepdim=True)
    if density is None:
        keep = torch.ones(shape, dtype=torch.bool)
    else:
        keep = w.abs() >= w.abs().flatten().quantile(1 - density)
    cent = torch.quantile(w[keep], torch.linspace(0.05, 0.95, 7))
    idx = (w[..., None] - cent).abs().argmin(-1) + 1
    return torch.where(keep, idx, torch.zeros_like(idx)).to(torch.uint8)
