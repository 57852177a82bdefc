"""Shared by the pass tests: trained demo teachers (cached), digits data, a valid example
config for every registered pass, and helpers to apply, pack and reload."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch

from ci_compress.config import parse_config
from ci_compress.layers.inspect import count_parameters
from ci_compress.loading.data import digits_split
from ci_compress.packing.file import PackInfo, load_packed, pack
from ci_compress.passes.base import PassContext, PassRecord
from ci_compress.passes.registry import PASSES
from ci_compress.passes.run import apply_pass
from tests.helpers.configs import base_config

# One small, valid, fast config per registered pass (the contract and round-trip tests
# fail for a registered pass that has none here).
EXAMPLES: dict[str, dict[str, Any]] = {
    "cluster": {"type": "cluster", "bits": 4},
    "distill": {"type": "distill", "width": 0.5, "epochs": 2},
    "lowrank": {"type": "lowrank", "rank_ratio": 0.5},
    "prune": {"type": "prune", "amount": 0.3},
    "quantize": {"type": "quantize", "scheme": "int8-static", "calibration_batches": 4},
}


@functools.cache
def split(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = digits_split(name)
    return torch.from_numpy(x).float(), torch.from_numpy(y).long()


def batches(name: str, size: int = 64) -> Any:
    def gen() -> Any:
        x, y = split(name)
        for i in range(0, len(y), size):
            yield x[i : i + size], y[i : i + size]

    return gen


@functools.cache
def _teacher_state(kind: str) -> dict[str, torch.Tensor]:
    from ci_compress.demo.train import train_teacher

    model = train_teacher(kind, seed=0, epochs=30)
    return {k: v.clone() for k, v in model.state_dict().items()}  # type: ignore[attr-defined]


def teacher(kind: str) -> torch.nn.Module:
    """A fresh copy of the trained demo teacher (trained once per test process)."""
    from ci_compress.demo.models import digits_cnn, digits_mlp

    model = digits_mlp() if kind == "mlp" else digits_cnn()
    model.load_state_dict(_teacher_state(kind))
    return model.eval()


def accuracy(model: torch.nn.Module) -> float:
    """Top-1 accuracy in percent on the digits test split."""
    x, y = split("test")
    with torch.no_grad():
        return 100.0 * float((model(x).argmax(1) == y).float().mean())


def context(index: int = 0, *, train: bool = True, calibration: bool = True) -> PassContext:
    return PassContext(
        seed=index,
        index=index,
        train_data=batches("train") if train else None,
        calibration_data=batches("train") if calibration else None,
    )


def apply(
    model: torch.nn.Module, *passes: dict[str, Any], train: bool = True, calibration: bool = True
) -> tuple[torch.nn.Module, list[PassRecord]]:
    """Validate the pass configs as the config loader does, then apply them in order."""
    cfg = parse_config(base_config(passes=list(passes)))
    records = []
    for i, p in enumerate(cfg.passes):
        torch.manual_seed(i)
        model, record = apply_pass(
            PASSES[p.type], model, p, context(i, train=train, calibration=calibration)
        )
        records.append(record)
    return model, records


def ship(model: torch.nn.Module, folder: Path) -> tuple[torch.nn.Module, PackInfo]:
    """Pack to a real .ccz file and rebuild it, as the gate does."""
    info = pack(model, folder / "student.ccz")
    reloaded, _ = load_packed(folder / "student.ccz")
    return reloaded, info


def params(model: torch.nn.Module) -> int:
    return count_parameters(model)[0]
