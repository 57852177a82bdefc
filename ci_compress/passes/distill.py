"""Knowledge distillation (Hinton, Vinyals & Dean 2015) into a smaller student.

The student comes from ``student_factory`` (``package.module:function`` returning an
untrained ``nn.Module``) or is derived from the incoming model by ``width``: structured
pruning of the teacher on its own dependency graph keeps ``width`` of every prunable
group (conv channels tied across skip connections, attention heads, FFN neurons, hidden
Linear neurons; widths that are the model's outputs keep all), on any architecture
(:mod:`ci_compress.passes.structured`), or by ``layers``: only those blocks of the
teacher's stack of repeated blocks are kept (:mod:`ci_compress.passes.blocks`; with
``width``, then narrowed). A derived student starts from the teacher's kept weights.
It is trained on ``data.train`` with

    loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))
           + (1 - alpha) * cross_entropy(student, labels)

(``loss: kl``, for classifiers). A model whose outputs are not class scores (an
embedding model's hidden states, a regression) is distilled on the outputs themselves,
with no labels: ``loss: mse`` (squared error divided by the teacher outputs' variance,
so the loss does not depend on their scale) or ``loss: cosine`` (1 - cosine similarity
along the last dimension, averaged over every other position: each token of a
transformer's ``last_hidden_state``).

Gated as an embedding task (the context's ``pool`` and ``mask``, from
:func:`ci_compress.stages.task_objective`), the label-free loss is what the gate
scores: the per-token terms (the output's and ``hidden``'s) average over the positions
the attention mask keeps, never the padding (:func:`token_weights`), and a second term
compares the task's own pooled embeddings (its ``pool``, not a copy): 1 - their cosine,
or their MSE over the pooled teacher embeddings' variance. Outputs that are already
``(samples, dim)`` get no pooled term (it would be the output itself); without a task
or a mask input, every position counts, as before.

``hidden: w`` (layers or width) adds ``w`` times a per-block loss, averaged over the
student's blocks: each block's output against the teacher's hidden state that the next
kept block was trained to read (kept [0, 4, 5] of 6: the teacher's outputs after
blocks 3, 4 and 5), 1 - cosine per token for ``loss: cosine`` (DistilBERT), else MSE
over that state's variance (TinyBERT). On all-MiniLM-L6-v2 with [0, 4, 5] it did not
raise the embedding cosine (0.9237 with ``hidden: 1``, 0.9241 without, 4 epochs:
docs/performance.md); on the embedding task's objective above, 0.9318 with ``hidden: 1``,
0.9328 without.

The teacher is the model the pass receives (the original when distill is the first
pass). The trained student replaces the model for the passes after it.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator, model_validator

from ci_compress.errors import ConfigError, DataError
from ci_compress.layers.batches import Inputs, batch_size, take
from ci_compress.passes.base import PassConfig, PassContext, PassRecord
from ci_compress.passes.blocks import BlockOutputs, find_blocks, keep_blocks_
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
    layers: tuple[int, ...] | None = Field(
        None,
        description="Derive the student from the teacher by keeping only these blocks (0-based, increasing) of its stack of repeated blocks (the nn.ModuleList with the most modules of one class: a BERT's encoder.layer, GPT-2's h), weights copied; with width, the kept blocks are then narrowed.",
    )
    hidden: float = Field(
        0.0,
        ge=0,
        le=100,
        description="Weight of a per-block loss (layers or width): each student block's output against the teacher's hidden state the next kept block reads (cosine for loss: cosine, else MSE over the teacher's variance); 0 turns it off.",
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

    @field_validator("layers")
    @classmethod
    def _increasing(cls, layers: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if layers is None:
            return None
        if not layers:
            raise ValueError("keep at least one block, e.g. [0, 4, 5]")
        if min(layers) < 0:
            raise ValueError(f"block indices start at 0, got {min(layers)}")
        if any(b <= a for a, b in pairwise(layers)):
            raise ValueError(
                f"give each block once, in increasing order (e.g. {sorted(set(layers))}), got {list(layers)}"
            )
        return layers

    @model_validator(mode="after")
    def _one_student(self) -> DistillConfig:
        derived = self.width is not None or self.layers is not None
        if (self.student_factory is None) != derived:
            raise ValueError(
                "give exactly one of student_factory, width or layers (width and layers may go together)"
            )
        if self.width is None and (self.include != ("*",) or self.exclude):
            raise ValueError(
                "include and exclude choose the modules width narrows (e.g. include: ['re:.*intermediate\\.dense'] narrows only the FFNs); without width the whole student is trained: give width or remove them"
            )
        if self.hidden and self.student_factory is not None:
            raise ValueError(
                "hidden matches the teacher's blocks to the student's: it needs a student derived by layers or width, not student_factory"
            )
        return self

    def needs_data(self) -> tuple[tuple[str, str], ...]:
        return (("data.train", "distills a student"),)

    def factories(self) -> dict[str, str]:
        return {"student_factory": self.student_factory} if self.student_factory else {}


Config = DistillConfig


def derive_student(
    teacher: nn.Module,
    width: float | None,
    where: str,
    example: Inputs | None,
    layers: tuple[int, ...] | None = None,
    include: tuple[str, ...] = ("*",),
    exclude: tuple[str, ...] = (),
    narrowed: dict[str, Any] | None = None,
) -> nn.Module:
    """A smaller copy of the teacher on any architecture, starting from its weights.

    ``layers``: only those blocks of its stack of repeated blocks are kept
    (:mod:`ci_compress.passes.blocks`). ``width``: structured pruning keeps ``width`` of
    every prunable group (channels, heads, FFN neurons), chosen by the L1 norm of the
    teacher's weights; widths that are the model's outputs are kept
    (:mod:`ci_compress.passes.structured`); ``include``/``exclude`` choose the layers
    whose output widths are narrowed (the groups they root), and ``narrowed`` receives
    what was (``layers``: module -> [before, after] width; ``heads``). Both: blocks
    first, then width.
    """
    student = copy.deepcopy(teacher)
    if layers is not None:
        keep_blocks_(student, layers, f"{where}.layers", allow_all=width is not None)
    if width is not None:
        assert example is not None  # the caller passes one with width
        done = prune_structured(
            student,
            amount=1 - width,
            example=example,
            where=where,
            include=include,
            exclude=exclude,
            field="width" if include == ("*",) and not exclude else "include",
        )
        if narrowed is not None:
            narrowed.update(layers=done["layers"], heads=done["heads"])
    return student


def block_targets(kept: list[int], depth: int) -> list[int]:
    """For each kept block, the teacher block whose output the student's block is to
    match: the one just before the next kept block (what that block was trained to
    read), the teacher's last block for the last. Kept [0, 4, 5] of 6: [3, 4, 5]."""
    return [nxt - 1 for nxt in kept[1:]] + [depth - 1]


def block_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    kind: str,
    scale: float,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """One block's hidden-state mismatch: 1 - cosine per token (``loss: cosine``), else
    the squared error over the teacher state's variance ``scale``; averaged over the
    positions ``weights`` keeps (all when None)."""
    kind = "cosine" if kind == "cosine" else "mse"
    return output_loss(student, teacher, kind, scale, weights)


def token_weights(inputs: Any, name: str | None, states: torch.Tensor) -> torch.Tensor | None:
    """The ``(samples, tokens)`` weights of a per-token loss on ``states``: the attention
    mask, the input ``name`` (an embedding task's ``task.mask``: 1 a real token, 0
    padding), as floats. None (every position counts, as without a task) when there is
    no such name or input, or ``states`` are not ``(samples, tokens, dim)``."""
    import torch

    if name is None or states.dim() != 3 or not isinstance(inputs, Mapping):
        return None
    mask = inputs.get(name)
    if not isinstance(mask, torch.Tensor):
        return None
    if tuple(mask.shape) != tuple(states.shape[:2]):
        raise DataError(
            f"the input {name!r} has shape {tuple(mask.shape)}, the token states "
            f"{tuple(states.shape)}: distill cannot leave out the padded positions",
            hint="task.mask names the (samples, tokens) attention mask",
        )
    return mask.to(states.device, torch.float32)


def variance(t: torch.Tensor, weights: torch.Tensor | None = None) -> float:
    """The variance of ``t``'s elements at the positions ``weights`` keeps (all when
    None), at least 1e-12: the scale the ``mse`` losses divide by."""
    kept = t if weights is None else t[weights > 0]
    return max(float(kept.float().var()), 1e-12) if kept.numel() > 1 else 1.0


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
    student_out: torch.Tensor,
    teacher_out: torch.Tensor,
    kind: str,
    scale: float,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """The label-free losses: ``mse`` (divided by ``scale``, the teacher outputs'
    variance) or ``cosine`` (1 - cosine along the last dimension), averaged over every
    position, or with ``weights`` (``(samples, tokens)``, :func:`token_weights`) over
    the positions it keeps: the padding of a batch does not count."""
    import torch.nn.functional as F

    if weights is None:
        if kind == "mse":
            return F.mse_loss(student_out, teacher_out) / scale
        return (1 - F.cosine_similarity(student_out, teacher_out, dim=-1)).mean()
    if kind == "mse":
        per = (student_out - teacher_out).pow(2).mean(dim=-1) / scale
    else:
        per = 1 - F.cosine_similarity(student_out, teacher_out, dim=-1)
    return (per * weights).sum() / weights.sum().clamp(min=1.0)


def make_student(
    model: nn.Module,
    config: DistillConfig,
    seed: int,
    where: str,
    base_dir: Path | None = None,
    example: Inputs | None = None,
    narrowed: dict[str, Any] | None = None,
) -> nn.Module:
    import torch

    torch.manual_seed(seed)
    if config.student_factory is not None:
        student: nn.Module = import_factory(
            config.student_factory, path=f"{where}.student_factory", base_dir=base_dir
        )()
        return student
    return derive_student(
        model,
        config.width,
        where,
        example,
        config.layers,
        config.include,
        config.exclude,
        narrowed,
    )


# teacher hidden states (``hidden``) are kept for the whole training set up to this many
# bytes; above it, the teacher runs again on each batch
HIDDEN_CACHE_BYTES = 1 << 30
TEACHER_CHUNK = 1024


class _Hidden:
    """The teacher side of the per-block loss: which teacher blocks each student block
    matches, their states for the whole training set when they fit in
    ``HIDDEN_CACHE_BYTES`` (else computed again per batch), and each one's variance."""

    def __init__(
        self, teacher: nn.Module, layers: tuple[int, ...] | None, stack: Any, mask: str | None
    ) -> None:
        depth = len(stack)
        self.mask = mask
        kept = list(layers) if layers is not None else list(range(depth))
        self.teacher, self.stack = teacher, stack
        self.targets = block_targets(kept, depth)
        self.parts: list[list[torch.Tensor]] | None = None
        self.cache: list[torch.Tensor] | None = None
        self.scales: list[float] = []

    def run(self, x: Inputs, output: Any) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The teacher's outputs and target block states on ``x`` (no gradients)."""
        import torch

        with torch.no_grad(), BlockOutputs(self.stack, self.targets) as hooked:
            out = logits(self.teacher, x, output)
            return out, [t.detach() for t in hooked.take()]

    def add(self, states: list[torch.Tensor], first: bool, n: int, x: Inputs) -> None:
        """Keep one chunk's states (of the inputs ``x``); the first decides the scales
        (over the real tokens) and whether all fit."""
        if first:
            self.scales = [variance(t, token_weights(x, self.mask, t)) for t in states]
            per_sample = sum(t[0].numel() * t.element_size() for t in states)
            self.parts = [[] for _ in states] if per_sample * n <= HIDDEN_CACHE_BYTES else None
        if self.parts is not None:
            for held, t in zip(self.parts, states, strict=True):
                held.append(t)

    def finish(self, device: torch.device) -> None:
        import torch

        if self.parts is not None:
            self.cache = [torch.cat(p).to(device) for p in self.parts]
            self.parts = None

    def states(self, xb: Any, idx: torch.Tensor, output: Any) -> list[torch.Tensor]:
        if self.cache is not None:
            return [t[idx.to(t.device)] for t in self.cache]
        return self.run(xb, output)[1]


def apply(model: nn.Module, config: DistillConfig, ctx: PassContext) -> PassRecord:
    """Train a student on the incoming model's outputs; the student replaces the model."""
    import torch

    where = f"passes[{ctx.index}]"
    data = require(ctx.train_data, "data.train", where, config.needs_data()[0][1])
    x, y = materialize(data, labels=config.loss == "kl")
    model.eval()
    n = batch_size(x)
    hidden: _Hidden | None = None
    if config.hidden:
        field = f"{where}.layers" if config.layers is not None else f"{where}.hidden"
        _, stack = find_blocks(model, field)
        hidden = _Hidden(model, config.layers, stack, ctx.mask)
    # an embedding task's pooling (ctx.pool): the embeddings the gate compares, a loss
    # term of their own for token-state outputs (for (samples, dim) ones it is the
    # per-token term itself)
    pool = ctx.pool if config.loss != "kl" else None
    chunks, pooled_chunks = [], []
    for i in range(0, n, TEACHER_CHUNK):
        xc = take(x, i, i + TEACHER_CHUNK)
        if hidden is None:
            with torch.no_grad():
                out = logits(model, xc, ctx.output)
        else:
            out, states = hidden.run(xc, ctx.output)
            hidden.add(states, i == 0, n, xc)
        chunks.append(out)
        if pool is not None and out.dim() == 3:
            pooled_chunks.append(pool(out, xc).detach())
    teacher_logits = torch.cat(chunks)
    example = take(x, 0, min(4, n))
    narrowed: dict[str, Any] = {}
    student = make_student(model, config, ctx.seed, where, ctx.base_dir, example, narrowed)
    field = (
        f"{where}.student_factory"
        if config.student_factory
        else f"{where}.layers"
        if config.layers is not None
        else f"{where}.width"
    )
    with torch.no_grad():
        try:
            out = logits(student, take(x, 0, 2), ctx.output)
        except Exception as e:
            raise ConfigError(
                f"the student cannot run on the training inputs: {type(e).__name__}: {e}",
                path=field,
            ) from None
    if tuple(out.shape[1:]) != tuple(teacher_logits.shape[1:]):
        raise ConfigError(
            f"the student outputs shape {tuple(out.shape[1:])}, the teacher {tuple(teacher_logits.shape[1:])}",
            path=field,
        )

    device = torch.device(ctx.device)
    soft_targets = teacher_logits.to(device)
    # the padding of the whole training set (None: every position counts)
    train_weights = token_weights(x, ctx.mask, teacher_logits)
    scale = variance(teacher_logits, train_weights)
    pooled_targets = torch.cat(pooled_chunks).to(device) if pooled_chunks else None
    pooled_scale = variance(pooled_targets) if pooled_targets is not None else 1.0
    student_stack = find_blocks(student, field)[1] if hidden is not None else None
    if hidden is not None:
        hidden.finish(device)
        if device.type != "cpu" and hidden.cache is None:
            model.to(device)
        assert student_stack is not None
        if len(student_stack) != len(hidden.targets):
            raise ConfigError(
                f"the student has {len(student_stack)} blocks, the hidden loss expects {len(hidden.targets)}",
                path=f"{where}.hidden",
            )

    def loss(m: nn.Module, xb: Any, yb: torch.Tensor, idx: torch.Tensor) -> Any:
        out, target = logits(m, xb, ctx.output), soft_targets[idx.to(soft_targets.device)]
        if config.loss != "kl":
            weights = token_weights(xb, ctx.mask, out)
            total = output_loss(out, target, config.loss, scale, weights)
            if pooled_targets is not None:
                assert pool is not None
                emb = pooled_targets[idx.to(pooled_targets.device)]
                total = total + output_loss(pool(out, xb), emb, config.loss, pooled_scale)
        else:
            total = distillation_loss(out, target, yb, config.temperature, config.alpha)
        if hidden is None:
            return total
        mine = hooked.take()
        theirs = hidden.states(xb, idx, ctx.output)
        per_block = []
        for k, (s, t, sc) in enumerate(zip(mine, theirs, hidden.scales, strict=True)):
            if s.shape != t.shape:
                raise ConfigError(
                    f"student block {k} outputs shape {tuple(s.shape)}, teacher block "
                    f"{hidden.targets[k]} {tuple(t.shape)}: the hidden loss needs equal shapes",
                    path=f"{where}.hidden",
                    hint="set hidden: 0 (e.g. with a width that narrows the blocks' outputs)",
                )
            per_block.append(block_loss(s, t, config.loss, sc, token_weights(xb, ctx.mask, s)))
        return total + config.hidden * torch.stack(per_block).mean()

    fit_args: dict[str, Any] = {
        "epochs": config.epochs,
        "lr": config.lr,
        "batch_size": config.batch_size,
        "seed": ctx.seed,
        "max_steps": config.max_steps,
        "loss_fn": loss,
        "output": ctx.output,
        "device": device,
    }
    try:
        if hidden is not None:
            assert student_stack is not None
            with BlockOutputs(student_stack, range(len(student_stack))) as hooked:
                result = fit(student, x, y, **fit_args)
        else:
            result = fit(student, x, y, **fit_args)
    finally:
        if hidden is not None and device.type != "cpu":
            model.to("cpu")
    student.eval()
    details: dict[str, Any] = {"student": type(student).__name__, "training": result, "samples": n}
    if narrowed:
        details["narrowed"] = narrowed  # what width removed: module -> [before, after]
    if config.loss != "kl":
        details["objective"] = {
            "pooled": pooled_targets is not None,
            "mask": ctx.mask if train_weights is not None else None,
        }
    if hidden is not None:
        details["hidden"] = {
            "teacher_blocks": hidden.targets,
            "cached": hidden.cache is not None,
        }
    record = PassRecord(
        name=TYPE,
        index=ctx.index,
        options=config.model_dump(mode="json"),
        modules=[n for n, _ in student.named_children()],
        details=details,
    )
    record.replacement = student
    return record
