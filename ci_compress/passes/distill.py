"""Knowledge distillation (Hinton, Vinyals & Dean 2015) into a smaller student.

The student comes from ``student_factory`` (``package.module:function`` returning an
untrained ``nn.Module``) or is derived from the incoming model by ``width``: every hidden
Linear/Conv layer keeps ``width`` of its outputs (the output layer keeps all), for
``nn.Sequential`` models of Linear, Conv, BatchNorm, pooling, Flatten and activations.
It is trained from a seeded initialisation on ``data.train`` with

    loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))
           + (1 - alpha) * cross_entropy(student, labels)

The teacher is the model the pass receives (the original when distill is the first
pass). The trained student replaces the model for the passes after it.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from ci_compress.errors import ConfigError
from ci_compress.layers.batches import batch_size, take
from ci_compress.passes.base import PassConfig, PassContext, PassRecord
from ci_compress.passes.training import fit, logits, materialize, require
from ci_compress.refs import factory_pattern, import_factory

if TYPE_CHECKING:
    import torch
    from torch import nn

TYPE = "distill"


class DistillConfig(PassConfig):
    """Train a smaller student on the teacher's softened outputs."""

    type: Literal["distill"] = "distill"
    student_factory: str | None = Field(
        None,
        pattern=factory_pattern().pattern,
        description="package.module:function returning the (untrained) student nn.Module.",
    )
    width: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="Derive the student from the teacher, keeping this fraction of every hidden layer's width.",
    )
    temperature: float = Field(4.0, gt=0, le=100, description="Softmax temperature T.")
    alpha: float = Field(
        0.9, ge=0, le=1, description="Weight of the soft (teacher) loss; 1 - alpha on the labels."
    )
    epochs: int = Field(30, ge=1, le=10000, description="Training epochs.")
    lr: float = Field(2e-3, gt=0, le=1, description="Learning rate (Adam).")
    batch_size: int = Field(64, ge=1, le=65536, description="Training batch size.")
    max_steps: int | None = Field(None, ge=1, description="Cap on optimizer steps.")

    @model_validator(mode="after")
    def _one_student(self) -> DistillConfig:
        if (self.student_factory is None) == (self.width is None):
            raise ValueError("give exactly one of student_factory or width")
        return self

    def needs_data(self) -> tuple[tuple[str, str], ...]:
        return (("data.train", "distills a student"),)

    def factories(self) -> dict[str, str]:
        return {"student_factory": self.student_factory} if self.student_factory else {}


Config = DistillConfig


def derive_student(teacher: nn.Module, width: float, where: str) -> nn.Module:
    """A fresh, narrower copy of a Sequential teacher (weights re-initialised)."""
    from torch import nn

    if not isinstance(teacher, nn.Sequential):
        raise ConfigError(
            f"width derives a student only from an nn.Sequential, not {type(teacher).__name__}",
            path=f"{where}.width",
            hint="give student_factory: package.module:function instead",
        )
    kids = list(teacher.named_children())
    compute = [
        i for i, (_, m) in enumerate(kids) if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d)
    ]
    if not compute:
        raise ConfigError("the model has no Linear/Conv layer to narrow", path=f"{where}.width")
    last = compute[-1]
    layers: list[tuple[str, nn.Module]] = []
    channels: int | None = None  # current width in the student (None: the input's)
    teacher_channels: int | None = None
    for i, (name, m) in enumerate(kids):
        if isinstance(m, nn.Linear):
            in_f = m.in_features
            if channels is not None and teacher_channels is not None:
                if in_f % teacher_channels:
                    raise ConfigError(
                        f"cannot narrow {name!r}: {in_f} inputs are not a multiple of {teacher_channels} channels",
                        path=f"{where}.width",
                        hint="give student_factory instead",
                    )
                in_f = channels * (in_f // teacher_channels)
            out_f = m.out_features if i == last else max(1, round(m.out_features * width))
            layers.append((name, nn.Linear(in_f, out_f, bias=m.bias is not None)))
            channels, teacher_channels = out_f, m.out_features
        elif isinstance(m, nn.Conv1d | nn.Conv2d):
            if m.groups != 1:
                raise ConfigError(
                    f"cannot narrow grouped convolution {name!r}", path=f"{where}.width"
                )
            in_c = m.in_channels if channels is None else channels
            out_c = m.out_channels if i == last else max(1, round(m.out_channels * width))
            layers.append(
                (
                    name,
                    type(m)(
                        in_c,
                        out_c,
                        m.kernel_size,  # type: ignore[arg-type]
                        stride=m.stride,  # type: ignore[arg-type]
                        padding=m.padding,  # type: ignore[arg-type]
                        dilation=m.dilation,  # type: ignore[arg-type]
                        bias=m.bias is not None,
                        padding_mode=m.padding_mode,
                    ),
                )
            )
            channels, teacher_channels = out_c, m.out_channels
        elif isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            n = m.num_features if channels is None else channels
            layers.append((name, type(m)(n, eps=m.eps, momentum=m.momentum, affine=m.affine)))
        elif isinstance(
            m,
            nn.ReLU
            | nn.ReLU6
            | nn.GELU
            | nn.SiLU
            | nn.Tanh
            | nn.Sigmoid
            | nn.LeakyReLU
            | nn.Identity
            | nn.Dropout
            | nn.Flatten
            | nn.Unflatten
            | nn.MaxPool1d
            | nn.MaxPool2d
            | nn.AvgPool1d
            | nn.AvgPool2d
            | nn.AdaptiveAvgPool2d,
        ):
            layers.append((name, copy.deepcopy(m)))
        else:
            raise ConfigError(
                f"width cannot narrow module {name!r} ({type(m).__name__})",
                path=f"{where}.width",
                hint="give student_factory: package.module:function instead",
            )
    from collections import OrderedDict

    return nn.Sequential(OrderedDict(layers))


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """Hinton's loss: T^2-scaled KL on softened outputs mixed with the hard-label loss."""
    import torch.nn.functional as F

    t = temperature
    soft = F.kl_div(
        F.log_softmax(student_logits / t, dim=1),
        F.log_softmax(teacher_logits / t, dim=1),
        reduction="batchmean",
        log_target=True,
    ) * (t * t)
    hard = F.cross_entropy(student_logits, labels)
    return alpha * soft + (1 - alpha) * hard


def make_student(
    model: nn.Module,
    config: DistillConfig,
    seed: int,
    where: str,
    base_dir: Path | None = None,
) -> nn.Module:
    import torch

    torch.manual_seed(seed)
    if config.student_factory is not None:
        student: nn.Module = import_factory(
            config.student_factory, path=f"{where}.student_factory", base_dir=base_dir
        )()
        return student
    return derive_student(model, config.width, where)  # type: ignore[arg-type]


def apply(model: nn.Module, config: DistillConfig, ctx: PassContext) -> PassRecord:
    """Train a student on the incoming model's outputs; the student replaces the model."""
    import torch

    where = f"passes[{ctx.index}]"
    data = require(ctx.train_data, "data.train", where, config.needs_data()[0][1])
    x, y = materialize(data)
    model.eval()
    n = batch_size(x)
    with torch.no_grad():
        teacher_logits = torch.cat(
            [logits(model, take(x, i, i + 1024), ctx.output) for i in range(0, n, 1024)]
        )
    student = make_student(model, config, ctx.seed, where, ctx.base_dir)
    with torch.no_grad():
        try:
            out = logits(student, take(x, 0, 2), ctx.output)
        except Exception as e:
            raise ConfigError(
                f"the student cannot run on the training inputs: {type(e).__name__}: {e}",
                path=f"{where}.student_factory" if config.student_factory else f"{where}.width",
            ) from None
    if tuple(out.shape[1:]) != tuple(teacher_logits.shape[1:]):
        raise ConfigError(
            f"the student outputs shape {tuple(out.shape[1:])}, the teacher {tuple(teacher_logits.shape[1:])}",
            path=f"{where}.student_factory" if config.student_factory else f"{where}.width",
        )

    device = torch.device(ctx.device)
    soft_targets = teacher_logits.to(device)

    def loss(m: nn.Module, xb: Any, yb: torch.Tensor, idx: torch.Tensor) -> Any:
        return distillation_loss(
            logits(m, xb, ctx.output),
            soft_targets[idx.to(soft_targets.device)],
            yb,
            config.temperature,
            config.alpha,
        )

    result = fit(
        student,
        x,
        y,
        epochs=config.epochs,
        lr=config.lr,
        batch_size=config.batch_size,
        seed=ctx.seed,
        max_steps=config.max_steps,
        loss_fn=loss,
        output=ctx.output,
        device=device,
    )
    student.eval()
    record = PassRecord(
        name=TYPE,
        index=ctx.index,
        options=config.model_dump(mode="json"),
        modules=[n for n, _ in student.named_children()],
        details={"student": type(student).__name__, "training": result, "samples": n},
    )
    record.replacement = student
    return record
