"""Train the demo teacher deterministically and write a ready-to-run gate config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ci_compress.config import dump_yaml
from ci_compress.demo.models import FACTORIES
from ci_compress.files import atomic_write, atomic_write_bytes
from ci_compress.loading.data import digits_split
from ci_compress.refs import import_factory

DEMO_PASSES = [
    {"type": "prune", "amount": 0.5},
    {"type": "quantize", "scheme": "int8-dynamic"},
]
DEMO_THRESHOLDS = {"max_accuracy_drop": 1.5, "min_compression_ratio": 3.0}


def train_teacher(kind: str = "mlp", *, seed: int = 0, epochs: int = 40) -> object:
    """A teacher trained on the digits train split; same seed, same weights."""
    import torch

    torch.manual_seed(seed)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True, warn_only=True)
    model = import_factory(FACTORIES[kind], path="demo")()
    x, y = (torch.from_numpy(a) for a in digits_split("train"))
    return fit_classifier(model, x, y, epochs=epochs, lr=2e-3, seed=seed)


def fit_classifier(model: Any, x: Any, y: Any, *, epochs: int, lr: float, seed: int) -> Any:
    """Adam and cross-entropy, batches of 64 in an order seeded by ``seed``; the model
    ends in eval mode (the demo teachers and benchmarks/deep_compression.py's LeNets)."""
    import torch
    from torch import nn

    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=g)
        for i in range(0, len(y), 64):
            idx = order[i : i + 64]
            opt.zero_grad()
            loss_fn(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    return model


def prepare(workdir: Path, *, kind: str = "mlp", seed: int = 0) -> Path:
    """Train (or reuse) the demo teacher in ``workdir`` and write ``compress.yaml``."""
    from safetensors.torch import save

    workdir.mkdir(parents=True, exist_ok=True)
    weights = workdir / f"digits_{kind}.safetensors"
    if not weights.exists():
        model = train_teacher(kind, seed=seed)
        tensors = {k: v.contiguous() for k, v in model.state_dict().items()}  # type: ignore[attr-defined]
        atomic_write_bytes(weights, save(tensors))
    config = {
        "version": 1,
        "model": {"path": weights.name, "factory": FACTORIES[kind]},
        "data": {"holdout": {"builtin": "digits", "split": "test"}},
        "passes": DEMO_PASSES,
        "thresholds": DEMO_THRESHOLDS,
        "mlflow": {"experiment": "ci-compress-demo"},
        "report": {"dir": "report"},
        "runtime": {"seed": seed},
    }
    path = workdir / "compress.yaml"
    atomic_write(
        path,
        "# Written by `ci-compress demo`; edit and re-run with `ci-compress run --config "
        + str(path)
        + "`\n"
        + dump_yaml(config),
    )
    return path
