"""Every pass that trains holds every zero already in the model, not only its own layers'.

A later pass's fine-tuning used to retrain layers outside its ``include`` without their
masks, so earlier pruning came undone (issue 18: a second ``prune`` with fine-tuning took
a layer from 90% to 16.5% zeros).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from ci_compress.demo.models import digits_mlp
from ci_compress.passes import cluster, prune
from ci_compress.passes.base import PassContext
from ci_compress.passes.training import fit


def _data(n: int = 256, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 64, generator=g), torch.randint(0, 10, (n,), generator=g)


def _batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    x, y = _data()
    for i in range(0, len(y), 64):
        yield x[i : i + 64], y[i : i + 64]


def _ctx(index: int) -> PassContext:
    return PassContext(seed=0, index=index, train_data=_batches)


def test_fine_tuning_a_later_prune_keeps_an_earlier_prunes_zeros() -> None:
    torch.manual_seed(0)
    model = digits_mlp().train()
    first = prune.PruneConfig(type="prune", amount=0.9, include=("0",), scope="layer")
    prune.apply(model, first, _ctx(0))
    a = model[0].weight
    zeros_a = a == 0
    assert zeros_a.float().mean() > 0.89
    second = prune.PruneConfig(
        type="prune", amount=0.5, include=("2",), fine_tune_epochs=2, lr=1e-2
    )
    prune.apply(model, second, _ctx(1))
    assert bool((a[zeros_a] == 0).all()), f"{int((a[zeros_a] != 0).sum())} zeros came undone"
    assert float((model[2].weight == 0).float().mean()) >= 0.5
    # and layer A did train where it was not pruned
    assert bool((a[~zeros_a] != 0).all())


def test_fit_holds_zeros_in_every_trained_weight_but_not_in_biases() -> None:
    torch.manual_seed(0)
    model = digits_mlp()
    with torch.no_grad():
        for m in (model[0], model[2], model[4]):
            m.weight[:, ::3] = 0.0
            m.bias.zero_()  # a zero bias is an initial value, not pruning
    masks = [m.weight == 0 for m in (model[0], model[2], model[4])]
    x, y = _data()
    fit(model, x, y, epochs=2, lr=1e-2, batch_size=32, seed=0)
    for m, mask in zip((model[0], model[2], model[4]), masks, strict=True):
        assert bool((m.weight[mask] == 0).all())
        assert bool((m.bias != 0).any())


def test_clustering_fine_tune_keeps_zeros_outside_its_layers() -> None:
    torch.manual_seed(0)
    model = digits_mlp()
    prune.apply(
        model, prune.PruneConfig(type="prune", amount=0.8, include=("0",), scope="layer"), _ctx(0)
    )
    zeros = model[0].weight == 0
    cfg = cluster.ClusterConfig(type="cluster", bits=3, include=("2",), fine_tune_epochs=1)
    cluster.apply(model, cfg, _ctx(1))
    assert bool((model[0].weight[zeros] == 0).all())
