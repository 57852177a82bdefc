"""k-means weight sharing (Han et al. 2016, "Deep Compression"): non-uniform quantization.

Each selected Linear/Conv2d layer and Embedding table gets ``2**bits`` centroids (bits 1..8); every weight is
replaced by its nearest centroid and the layer stores small integer indices (uint8) plus
the codebook. k-means is deterministic: centroids start spread linearly over
[min, max] of the layer's weights (the initialisation the paper found best, since it
keeps the rare large weights) and run a fixed number of Lloyd iterations.

When the layer is sparse (pruned before), zero is reserved as one centroid that never
moves, so pruned weights stay exactly zero and the rest share ``2**bits - 1`` centroids.
``fine_tune_epochs > 0`` then trains only the centroids on ``data.train``: the gradient of
a centroid is the sum of the gradients of the weights that share it.

An ``nn.Embedding`` table becomes a :class:`~ci_compress.layers.modules.ClusteredEmbedding`
(a lookup gathers index rows, then their centroids). ``max_norm`` tables are refused; a
table tied to another module's weight is untied, and the pass says so.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from ci_compress.passes.base import (
    PassConfig,
    PassContext,
    PassRecord,
    refuse_embedding,
    select,
    set_submodule,
    tied_weights,
    untie_notes,
)
from ci_compress.passes.training import fit, materialize, require

if TYPE_CHECKING:
    import torch
    from torch import nn

TYPE = "cluster"


class ClusterConfig(PassConfig):
    """Share weights through 2**bits k-means centroids per layer."""

    type: Literal["cluster"] = "cluster"
    bits: int = Field(4, ge=1, le=8, description="Index bits: 2**bits centroids per layer.")
    iterations: int = Field(
        30, ge=1, le=1000, description="Lloyd iterations of k-means (fixed, for determinism)."
    )
    fine_tune_epochs: int = Field(
        0, ge=0, le=1000, description="Epochs of centroid fine-tuning on data.train (0: none)."
    )
    lr: float = Field(1e-4, gt=0, le=1, description="Centroid fine-tuning learning rate (Adam).")
    batch_size: int = Field(64, ge=1, le=65536, description="Fine-tuning batch size.")
    max_steps: int | None = Field(None, ge=1, description="Cap on fine-tuning optimizer steps.")

    def needs_data(self) -> tuple[tuple[str, str], ...]:
        if self.fine_tune_epochs:
            return (("data.train", "fine-tunes centroids (fine_tune_epochs > 0)"),)
        return ()


Config = ClusterConfig


def kmeans_1d(values: torch.Tensor, k: int, iterations: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(centroids sorted ascending, index of each value): deterministic 1-D k-means.

    The values are sorted once; each Lloyd step then finds the cluster boundaries by
    binary search and the cluster sums from float64 prefix sums, so a step costs
    O(k log n), not O(n): an embedding table of 12 M weights clusters in seconds.
    """
    import torch

    v = values.detach().float().reshape(-1)
    lo, hi = float(v.min()), float(v.max())
    k = max(1, min(k, v.numel()))
    c = torch.linspace(lo, hi, k) if k > 1 else v.mean().reshape(1)
    if k > 1:
        ordered, _ = torch.sort(v)
        prefix = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(ordered.double(), 0)])
        for _ in range(iterations):
            c, _order = torch.sort(c)
            # values <= boundary j go to clusters 0..j (torch.bucketize's rule)
            ends = torch.searchsorted(ordered, (c[1:] + c[:-1]) / 2, right=True)
            bounds = torch.cat([torch.zeros(1, dtype=torch.long), ends, torch.tensor([v.numel()])])
            counts = (bounds[1:] - bounds[:-1]).double()
            sums = prefix[bounds[1:]] - prefix[bounds[:-1]]
            new = torch.where(counts > 0, (sums / counts.clamp(min=1)).float(), c)
            if torch.equal(new, c):
                break
            c = new
    c, _ = torch.sort(c)
    if k > 1:
        idx = torch.bucketize(v, (c[1:] + c[:-1]) / 2)
    else:
        idx = torch.zeros(v.numel(), dtype=torch.long)
    return c, idx


def cluster_layer(layer: nn.Module, bits: int, iterations: int) -> nn.Module:
    """A ClusteredLinear/ClusteredConv2d/ClusteredEmbedding with the layer's weights
    shared by k-means."""
    import torch
    from torch import nn

    from ci_compress.layers import modules  # torch-bearing: imported on use

    new: Any
    if isinstance(layer, nn.Embedding):
        new = modules.ClusteredEmbedding(**modules.ClusteredEmbedding.geometry_of(layer), bits=bits)
    else:
        cls = modules.ClusteredLinear if isinstance(layer, nn.Linear) else modules.ClusteredConv2d
        new = cls(**cls.geometry_of(layer), bits=bits)
    w = layer.weight.detach().float().reshape(-1)  # type: ignore[operator]
    k = 2**bits
    codebook = torch.zeros(k)
    index = torch.zeros(w.numel(), dtype=torch.long)
    nz = w != 0
    if bool((~nz).any()) and k > 1:
        # zero keeps index 0 and value 0; the nonzero weights share the other k-1 centroids
        if bool(nz.any()):
            c, idx = kmeans_1d(w[nz], k - 1, iterations)
            codebook[1 : 1 + len(c)] = c
            index[nz] = idx + 1
    else:
        c, idx = kmeans_1d(w, k, iterations)
        codebook[: len(c)] = c
        index = idx
    with torch.no_grad():
        new.codebook.copy_(codebook)
        new.indices.copy_(index.to(torch.uint8).view(new.indices.shape))
        if getattr(layer, "bias", None) is not None:
            new.bias.copy_(layer.bias)
    return new  # type: ignore[no-any-return]


def apply(model: nn.Module, config: ClusterConfig, ctx: PassContext) -> PassRecord:
    """Replace each selected layer with its k-means clustered version; tune centroids."""
    import torch
    from torch import nn

    where = f"passes[{ctx.index}]"
    x = y = None
    if config.fine_tune_epochs:
        data = require(ctx.train_data, "data.train", where, config.needs_data()[0][1])
        x, y = materialize(data)
    chosen = select(
        model,
        config.include,
        config.exclude,
        (nn.Linear, nn.Conv2d, nn.Embedding),
        path=where,
        refuse=refuse_embedding,
    )
    ties = tied_weights(model, chosen)
    zero_kept: dict[str, bool] = {}
    for name, layer in chosen:
        new = cluster_layer(layer, config.bits, config.iterations)
        zero_kept[name] = bool((layer.weight == 0).any())  # type: ignore[union-attr]
        set_submodule(model, name, new)
    details: dict[str, Any] = {"bits": config.bits, "centroids": 2**config.bits}
    if x is not None and y is not None:
        clustered = [model.get_submodule(n) for n, _ in chosen]
        frozen = [p for p in model.parameters() if p.requires_grad]
        for p in frozen:
            p.requires_grad_(False)
        for m in clustered:
            m.codebook.requires_grad_(True)

        def keep_zero() -> None:
            for (name, _), m in zip(chosen, clustered, strict=True):
                if zero_kept[name]:
                    m.codebook[0] = 0.0  # type: ignore[operator]

        try:
            details["fine_tune"] = fit(
                model,
                x,
                y,
                epochs=config.fine_tune_epochs,
                lr=config.lr,
                batch_size=config.batch_size,
                seed=ctx.seed,
                max_steps=config.max_steps,
                after_step=keep_zero,
                **ctx.fit_options(),
            )
        finally:
            for p in frozen:
                p.requires_grad_(True)
    details["distinct_values"] = {
        n: int(torch.unique(model.get_submodule(n).decoded_weight()).numel())  # type: ignore[operator]
        for n, _ in chosen
    }
    warnings = untie_notes(ties, [n for n, _ in chosen], "clustered")
    if warnings:
        details["untied"] = ties
    return PassRecord(
        name=TYPE,
        index=ctx.index,
        options=config.model_dump(mode="json"),
        modules=[n for n, _ in chosen],
        details=details,
        warnings=warnings,
    )
