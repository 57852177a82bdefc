"""The steps a gate, ``explain`` and ``tune`` share: determinism, inputs, passes, shipping.

Each step takes what it needs and returns plain objects; none records or reports.
:mod:`ci_compress.pipeline` strings them together for a gate, :mod:`ci_compress.explain`
re-runs them with passes restricted to one layer, :mod:`ci_compress.tuning` once per trial.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ci_compress.config import LoadedConfig
from ci_compress.loading.data import Dataset, load_dataset
from ci_compress.loading.models import LoadedModel, model_factory, resolve_model
from ci_compress.packing.file import PackInfo, load_packed, pack
from ci_compress.passes.base import PassConfig, PassContext, PassRecord
from ci_compress.passes.registry import PASSES
from ci_compress.passes.run import apply_pass
from ci_compress.progress import Step

Progress = Callable[[str], None]


def set_determinism(seed: int, threads: int) -> None:
    """Seeds, thread count and deterministic algorithms: same inputs, same numbers."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    # may only be set before any inter-op parallel work has started
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(threads)
    _deterministic_algorithms()
    if hasattr(torch.backends, "cudnn"):
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def _deterministic_algorithms() -> None:
    """``torch.use_deterministic_algorithms(True, warn_only=True)``, without its import cost.

    The public call also imports ``torch._inductor.config`` (and with it torch._dynamo:
    1.5-4 s of start-up on a 2-core runner) only to set the compiler's flag. The gate
    runs eager models, so unless the compiler is already loaded, set the eager flag alone.
    """
    setter = getattr(torch._C, "_set_deterministic_algorithms", None)
    if setter is None or "torch._inductor.config" in sys.modules:
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        setter(True, warn_only=True)


@dataclass
class Inputs:
    """What a gate reads: the teacher and the data sets, loaded and checked."""

    teacher: LoadedModel
    holdout: Dataset
    train: Dataset | None
    calibration: Dataset | None


def load_inputs(
    loaded: LoadedConfig, out_dir: Path, *, fetch: Callable[[str, Path], Path] | None = None
) -> Inputs:
    """Load the teacher and the data sets the config names (downloads go under out_dir;
    ``fetch`` downloads a ``model.uri`` from MLflow)."""
    cfg = loaded.config
    teacher = resolve_model(cfg.model, loaded.base_dir, out_dir / "downloads", fetch=fetch)
    holdout = load_dataset(cfg.data.holdout, loaded.base_dir, field="data.holdout")
    train = (
        load_dataset(cfg.data.train, loaded.base_dir, field="data.train")
        if cfg.data.train
        else None
    )
    calib = (
        load_dataset(cfg.data.calibration, loaded.base_dir, field="data.calibration")
        if cfg.data.calibration
        else None
    )
    return Inputs(teacher=teacher, holdout=holdout, train=train, calibration=calib)


def apply_passes(
    loaded: LoadedConfig,
    inputs: Inputs,
    passes: Sequence[PassConfig],
    say: Progress | None = None,
    *,
    step: Step | None = None,
) -> tuple[nn.Module, list[PassRecord]]:
    """A copy of the teacher with ``passes`` applied in order (the teacher is untouched).

    Each pass is seeded with ``runtime.seed + index``, so the same passes give the same
    student; ``explain`` calls this with passes restricted to one layer.
    """
    cfg = loaded.config
    rt = cfg.runtime
    train, calib = inputs.train, inputs.calibration
    student = copy.deepcopy(inputs.teacher.module)
    records = []
    for i, pass_cfg in enumerate(passes):
        if say is not None:
            say(f"pass {i + 1}/{len(passes)}: {pass_cfg.type}")
        ctx = PassContext(
            seed=rt.seed + i,
            index=i,
            train_data=functools.partial(train.batches, cfg.data.batch_size) if train else None,
            calibration_data=(
                functools.partial(calib.batches, cfg.data.batch_size) if calib else None
            ),
            teacher=inputs.teacher.module,
            step=step,
        )
        torch.manual_seed(rt.seed + i)
        student, record = apply_pass(PASSES[pass_cfg.type], student, pass_cfg, ctx)
        records.append(record)
    return student, records


def ship(
    loaded: LoadedConfig, student: nn.Module, pass_history: list[dict[str, Any]], path: Path
) -> tuple[nn.Module, PackInfo]:
    """Write the packed file and rebuild the model from it: the student as it ships.

    Pass timings are left out of the packed file so that the same passes give the same
    bytes (the report keeps them).
    """
    cfg = loaded.config
    info = pack(
        student,
        path,
        passes=[{k: v for k, v in p.items() if k != "seconds"} for p in pass_history],
        factory=cfg.model.factory,
        level=cfg.ship.zstd_level,
    )
    shipped, _ = load_packed(path, factory=model_factory(cfg.model))
    return shipped, info


@dataclass(frozen=True)
class Shipped:
    """The student as it ships: the packed file, the model rebuilt from it, its pack
    info and the passes that made it."""

    path: Path
    module: nn.Module
    info: PackInfo
    passes: list[dict[str, Any]]
