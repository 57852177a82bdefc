"""Knowledge distillation (Hinton, Vinyals & Dean 2015) into a smaller student.

The student comes from ``student_factory`` (``package.module:function`` returning an
untrained ``nn.Module``) or is derived from the incoming model by ``width``: structured
pruning of the teacher on its own dependency graph keeps ``width`` of every prunable
group (conv channels tied across skip connections, attention heads, FFN neurons, hidden
Linear neurons; widths that are the model's outputs keep all), on any architecture
(:mod:`ci_compress.passes.structured`); that student starts from the teacher's kept
weights. It is trained on ``data.train`` with

    loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))
           + (1 - alpha) * cross_entropy(student, labels)

(``loss: kl``, for classifiers). A model whose outputs are not class scores (an
embedding model's hidden states, a regression) is distilled on the outputs themselves,
with no labels: ``loss: mse`` (squared error divided by the teacher outputs' variance,
so the loss does not depend on their scale) or ``loss: cosine`` (1 - cosine similarity
along the last dimension, averaged over every other position: each token of a
transformer's ``last_hidden_state``).

The teacher is the model the pass receives (the original when distill is the first
pass). The trained student replaces the model for the passes after it.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from ci_compress.errors import ConfigError
from ci_compress.layers.batches import Inputs, batch_size, take
from ci_compress.passes.base import PassConfig, PassContext, PassRecord
from ci_compress.passes.structured import prune_structured
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
        description="Derive the student by structured pruning of the teacher, keeping this fraction of every prunable group (channels, heads, neurons).",
    )
    loss: Literal["kl", "mse", "cosine"] = Field(
        "kl",
        description="kl: Hinton's softened KL mixed with the labels' cross-entropy (classifiers); mse or cosine: match the teacher's outputs themselves, no labels (embeddings, regression, hidden states).",
    )
    temperature: float = Field(4.0, gt=0, le=100, description="Softmax temperature T (loss: kl).")
    alpha: float = Field(
        0.9,
        ge=0,
        le=1,
        description="Weight of the soft (teacher) loss; 1 - alpha on the labels (loss: kl).",
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


def derive_student(teacher: nn.Module, width: float, where: str, example: Inputs) -> nn.Module:
    """A narrower copy of the teacher on any architecture: structured pruning keeps
    ``width`` of every prunable group (channels, heads, FFN neurons), chosen by the L1
    norm of the teacher's weights, which the student starts from. Widths that are the
    model's outputs are kept (:mod:`ci_compress.passes.structured`)."""
    student = copy.deepcopy(teacher)
    prune_structured(student, amount=1 - width, example=example, where=where, field="width")
    return student


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


def output_loss(
    student_out: torch.Tensor, teacher_out: torch.Tensor, kind: str, scale: float
) -> torch.Tensor:
    """The label-free losses: ``mse`` (divided by ``scale``, the teacher outputs'
    variance) or ``cosine`` (1 - cosine along the last dimension, averaged)."""
    import torch.nn.functional as F

    if kind == "mse":
        return F.mse_loss(student_out, teacher_out) / scale
    return (1 - F.cosine_similarity(student_out, teacher_out, dim=-1)).mean()


def make_student(
    model: nn.Module,
    config: DistillConfig,
    seed: int,
    where: str,
    base_dir: Path | None = None,
    example: Inputs | None = None,
) -> nn.Module:
    import torch

    torch.manual_seed(seed)
    if config.student_factory is not None:
        student: nn.Module = import_factory(
            config.student_factory, path=f"{where}.student_factory", base_dir=base_dir
        )()
        return student
    assert config.width is not None and example is not None  # one of the two, validated
    return derive_student(model, config.width, where, example)


def apply(model: nn.Module, config: DistillConfig, ctx: PassContext) -> PassRecord:
    """Train a student on the incoming model's outputs; the student replaces the model."""
    import torch

    where = f"passes[{ctx.index}]"
    data = require(ctx.train_data, "data.train", where, config.needs_data()[0][1])
    x, y = materialize(data, labels=config.loss == "kl")
    model.eval()
    n = batch_size(x)
    with torch.no_grad():
        teacher_logits = torch.cat(
            [logits(model, take(x, i, i + 1024), ctx.output) for i in range(0, n, 1024)]
        )
    example = take(x, 0, min(4, n))
    student = make_student(model, config, ctx.seed, where, ctx.base_dir, example)
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

    scale = max(float(teacher_logits.float().var()), 1e-12)

    def loss(m: nn.Module, xb: Any, yb: torch.Tensor, idx: torch.Tensor) -> Any:
        out, target = logits(m, xb, ctx.output), soft_targets[idx.to(soft_targets.device)]
        if config.loss != "kl":
            return output_loss(out, target, config.loss, scale)
        return distillation_loss(out, target, yb, config.temperature, config.alpha)

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
