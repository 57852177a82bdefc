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
from ci_compress.errors import ConfigError
from ci_compress.evaluation.metrics import probe
from ci_compress.evaluation.tasks import Embedding, Task, make_task
from ci_compress.layers.batches import resolve_device
from ci_compress.loading.data import Dataset, load_dataset
from ci_compress.loading.models import EXPORT_SUFFIX, LoadedModel, model_factory, resolve_model
from ci_compress.packing.file import PackInfo, load_packed, pack
from ci_compress.packing.runtimes import Served
from ci_compress.packing.runtimes import check_available as check_runtime_available
from ci_compress.packing.runtimes import serve as serve_runtime
from ci_compress.passes.base import PassConfig, PassContext, PassRecord
from ci_compress.passes.registry import PASSES
from ci_compress.passes.run import apply_pass
from ci_compress.passes.training import missing
from ci_compress.progress import Step
from ci_compress.refs import import_factory

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


def check(loaded: LoadedConfig, *, gate: bool = True) -> Task:
    """Everything a run would reject, found before a model is loaded; returns the task.

    Imports every ``package.module:function`` reference (model, data, pass and metric
    factories, with the config's folder importable), checks that each pass finds the
    data section it reads (``data.train`` to fine-tune or distill, ``data.calibration``
    for static quantization), that ``runtime.device`` exists here, and that a
    ``torch.export`` program is not given passes. ``ci-compress validate`` runs it, and
    so does every run, explain and tune (:func:`load_inputs`).

    ``gate`` is kept for the callers; every task can be gated and explained (the
    per-layer analysis ranks layers by the task's primary metric).
    """
    cfg = loaded.config
    base = loaded.base_dir
    if cfg.model.factory:
        import_factory(cfg.model.factory, path="model.factory", base_dir=base)
    for name in ("holdout", "train", "calibration"):
        source = getattr(cfg.data, name)
        if source is not None and source.factory:
            import_factory(source.factory, path=f"data.{name}.factory", base_dir=base)
    for i, p in enumerate(cfg.passes):
        for field_name, ref in p.factories().items():
            import_factory(ref, path=f"passes[{i}].{field_name}", base_dir=base)
        for field, why in p.needs_data():
            # "data.calibration or data.train": any one of them will do
            if all(getattr(cfg.data, f.removeprefix("data.")) is None for f in field.split(" or ")):
                raise missing(field, f"passes[{i}]", why)
    if cfg.passes and cfg.model.path and Path(cfg.model.path).suffix == EXPORT_SUFFIX:
        raise ConfigError(
            "a torch.export program (.pt2) cannot be compressed: its layers are graph operations, not modules a pass can rewrite",
            path="passes",
            hint="gate the program as it is with passes: [], or give the eager model (a state_dict with model.factory) to compress",
        )
    resolve_device(cfg.runtime.device)
    _check_runtime(loaded)
    return make_task(cfg.task, base_dir=base)


# the quantize pass's schemes that make torch.ao int8 modules (no ONNX/OpenVINO operator)
TORCH_INT8_SCHEMES = ("int8-dynamic", "int8-static")


def _check_runtime(loaded: LoadedConfig) -> None:
    """``ship.runtime``/``ship.quantize`` against the rest of the config and what is installed."""
    cfg = loaded.config
    ship_cfg = cfg.ship
    if ship_cfg.runtime == "torch":
        return
    for i, p in enumerate(cfg.passes):
        scheme = getattr(p, "scheme", None)
        if p.type == "quantize" and scheme in TORCH_INT8_SCHEMES:
            raise ConfigError(
                f"passes[{i}].scheme {scheme} makes torch.ao int8 modules, which "
                f"ship.runtime: {ship_cfg.runtime} cannot run",
                path="ship.runtime",
                hint=f"drop the quantize pass passes[{i}] and set ship.quantize: int8 "
                f"({ship_cfg.runtime} quantizes with its own toolchain), or set ship.runtime: torch",
            )
    if ship_cfg.runtime == "onnxruntime" and "onnx" in ship_cfg.export:
        raise ConfigError(
            "ship.runtime: onnxruntime writes the student's ONNX file itself, and "
            "ship.export: onnx would overwrite it",
            path="ship.export",
            hint="remove onnx from ship.export (the served student.onnx is the ONNX export)",
        )
    if ship_cfg.quantize == "int8" and cfg.data.calibration is None:
        raise missing("data.calibration", "ship.quantize", "int8 calibrates activation ranges")
    if resolve_device(cfg.runtime.device).type != "cpu":
        raise ConfigError(
            f"ship.runtime: {ship_cfg.runtime} serves on the CPU here, but runtime.device is "
            f"{cfg.runtime.device}",
            path="runtime.device",
            hint="set runtime.device: cpu, or ship.runtime: torch",
        )
    check_runtime_available(ship_cfg.runtime, ship_cfg.quantize)


@dataclass
class Inputs:
    """What a gate reads: the teacher and the data sets, loaded and checked."""

    teacher: LoadedModel
    holdout: Dataset
    train: Dataset | None
    calibration: Dataset | None
    task: Task | None = None
    # largest difference between two forward passes of the teacher on the same batch
    # (0.0: deterministic, as a gate needs)
    teacher_variation: float = 0.0


def load_inputs(
    loaded: LoadedConfig,
    out_dir: Path,
    *,
    fetch: Callable[[str, Path], Path] | None = None,
    gate: bool = True,
) -> Inputs:
    """Load the teacher and the data sets the config names (downloads go under out_dir;
    ``fetch`` downloads a ``model.uri`` from MLflow).

    :func:`check` runs first. The holdout and training targets are checked by the
    task; the teacher is then run twice on the first holdout samples, so a model that
    cannot take the data fails now, with its own message (exit 3), and one that does not
    give the same outputs twice is found (``Inputs.teacher_variation``).
    """
    cfg = loaded.config
    task = check(loaded, gate=gate)
    teacher = resolve_model(cfg.model, loaded.base_dir, out_dir / "downloads", fetch=fetch)
    holdout = load_dataset(
        cfg.data.holdout, loaded.base_dir, field="data.holdout", check_target=task.check_target
    )
    train = (
        load_dataset(
            cfg.data.train, loaded.base_dir, field="data.train", check_target=task.check_target
        )
        if cfg.data.train
        else None
    )
    calib = (
        load_dataset(cfg.data.calibration, loaded.base_dir, field="data.calibration")
        if cfg.data.calibration
        else None
    )
    variation = probe(teacher.module, holdout, output=cfg.model.output)
    return Inputs(
        teacher=teacher,
        holdout=holdout,
        train=train,
        calibration=calib,
        task=task,
        teacher_variation=variation,
    )


def task_objective(task: Task | None) -> dict[str, Any]:
    """What a training pass needs of the task it is gated on (:class:`PassContext`'s
    ``pool`` and ``mask``): an embedding task's own pooling and its attention-mask
    input, so that ``distill`` trains on the embeddings the gate compares, over real
    tokens; nothing for the other tasks."""
    if not isinstance(task, Embedding):
        return {}
    return {"pool": functools.partial(task.pool, role="student"), "mask": task.mask}


def apply_passes(
    loaded: LoadedConfig,
    inputs: Inputs,
    passes: Sequence[PassConfig],
    say: Progress | None = None,
    *,
    step: Step | None = None,
    allow_noop: bool = False,
) -> tuple[nn.Module, list[PassRecord]]:
    """A copy of the teacher with ``passes`` applied in order (the teacher is untouched).

    Each pass is seeded with ``runtime.seed + index``, so the same passes give the same
    student; ``explain`` calls this with passes restricted to one layer (``allow_noop``:
    a pass left nothing to do there is not an error, as it is in a gate).
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
            output=cfg.model.output,
            device=resolve_device(rt.device).type,
            base_dir=loaded.base_dir,
            **task_objective(inputs.task),
        )
        torch.manual_seed(rt.seed + i)
        student, record = apply_pass(
            PASSES[pass_cfg.type], student, pass_cfg, ctx, allow_noop=allow_noop
        )
        records.append(record)
    return student, records


# samples of the first holdout batch the packer exports a custom model's graph with
EXAMPLE_SAMPLES = 4


def ship(
    loaded: LoadedConfig,
    student: nn.Module,
    pass_history: list[dict[str, Any]],
    path: Path,
    *,
    holdout: Dataset | None = None,
) -> tuple[nn.Module, PackInfo]:
    """Write the packed file and rebuild the model from it: the student as it ships.

    Pass timings are left out of the packed file so that the same passes give the same
    bytes (the report keeps them). A student with modules of custom classes ships its
    graph, exported on the first samples of ``holdout``, and reloads without a factory.
    :func:`serve` then makes the runtime artifact of a ``ship.runtime`` other than torch
    from the model returned here.
    """
    cfg = loaded.config
    first = holdout.first_batch(EXAMPLE_SAMPLES) if holdout is not None else None
    factory = model_factory(cfg.model, loaded.base_dir)
    info = pack(
        student,
        path,
        passes=[{k: v for k, v in p.items() if k != "seconds"} for p in pass_history],
        factory=cfg.model.factory,
        level=cfg.ship.zstd_level,
        example=first[0] if first is not None else None,
        rebuildable=factory is not None,
    )
    shipped, _ = load_packed(path, factory=factory)
    return shipped, info


def serve(loaded: LoadedConfig, module: nn.Module, inputs: Inputs, path: Path) -> Served | None:
    """The student read back from the ``.ccz`` at ``path``, converted to ``ship.runtime``
    (and int8-quantized by it, ``ship.quantize``) beside it and loaded in that runtime:
    what the gate evaluates and times. None for torch (the ``.ccz`` serves as it is).

    The example batch is the holdout's first; calibration reads the first
    ``ship.calibration_batches`` batches of ``data.calibration``.
    """
    cfg = loaded.config
    if cfg.ship.runtime == "torch":
        return None
    calib = inputs.calibration
    x, _ = next(inputs.holdout.batches(cfg.data.batch_size))
    return serve_runtime(
        module,
        cfg.ship.runtime,
        path.parent,
        path.name.removesuffix(".ccz"),
        x,
        quantize=cfg.ship.quantize,
        calibration=(
            (lambda: (b for b, _ in calib.batches(cfg.data.batch_size))) if calib else None
        ),
        calibration_batches=cfg.ship.calibration_batches,
        threads=cfg.runtime.threads,
        output=cfg.model.output,
    )


@dataclass(frozen=True)
class Shipped:
    """The student as it ships: the packed file, the model rebuilt from it, its pack
    info and the passes that made it."""

    path: Path
    module: nn.Module
    info: PackInfo
    passes: list[dict[str, Any]]
    # the runtime artifact that serves it (ship.runtime other than torch)
    served: Served | None = None

    @property
    def serving(self) -> nn.Module:
        """The model that is evaluated and timed: the runtime's, else the torch one."""
        return self.served.module if self.served is not None else self.module

    @property
    def file_bytes(self) -> int:
        """The shipped size: the runtime artifact's bytes, else the .ccz's."""
        return self.served.file_bytes if self.served is not None else self.info.file_bytes
