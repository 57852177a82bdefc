"""Tasks: model outputs and targets in, per-sample scores and named metrics out.

A task is one object. Evaluation feeds it each batch's outputs (one tensor per model,
already picked by :func:`ci_compress.layers.outputs.select_output`), the batch's
target and inputs; at the end it gives, per model, a **per-sample primary score** and
the task's aggregate **metrics** by name. The paired statistics, the per-class view
and the thresholds are built on those, never on "accuracy" by name:

==================  ==================  =====================================================
task                primary (per sample) metrics (``higher_is_better``)
==================  ==================  =====================================================
classification      top-1 correct (0/1) accuracy, top_k_accuracy, macro_f1, agreement (all up)
multilabel          sample F1           f1, exact_match, agreement (up)
regression          absolute error      mae, rmse (down), r2 (up)
embedding           cosine to reference cosine, neighbour_agreement (up)
language-model      mean token NLL      nll, perplexity (down), next_token_accuracy,
                                        next_token_agreement (up)
custom              what ``metric``     its function's name (``higher_is_better``)
                    returns
==================  ==================  =====================================================

``agreement``-like metrics compare each model with the reference model (the teacher):
the reference scores 1 on them by definition. The table of names and directions is
:data:`ci_compress.config.task.TASK_METRICS` (the config validates threshold names
against it); ``tests/unit/test_tasks.py`` checks every task reports exactly those.

Memory is bounded: a task keeps per-sample scores (one float per sample and model) and
fixed-size counters, never the outputs; ``embedding`` keeps the first
``task.neighbours`` pooled embeddings per model (1,000 by default: 1.5 MB at 384
dimensions) for the nearest-neighbour agreement.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ci_compress.errors import ConfigError, DataError, ModelOutputError
from ci_compress.layers.batches import Inputs, all_finite, describe, first_tensor
from ci_compress.refs import import_factory

if TYPE_CHECKING:
    import numpy as np
    import torch

    from ci_compress.config.task import TaskConfig

INT_DTYPES = ("int64", "int32", "int16", "int8", "uint8")


@dataclass
class RoleScores:
    """One model's result on the holdout."""

    samples: int
    scores: np.ndarray  # per-sample primary score, float64 (0/1 for classification)
    metrics: dict[str, float]
    class_correct: np.ndarray | None = field(default=None, repr=False)
    class_total: np.ndarray | None = field(default=None, repr=False)


class Accumulator(Protocol):
    """One evaluation pass of a task: fed batch by batch, finished once."""

    def add(
        self, outputs: Mapping[str, torch.Tensor], target: torch.Tensor | None, inputs: Inputs
    ) -> None: ...

    def finish(self) -> dict[str, RoleScores]: ...


class Task(Protocol):
    """What evaluation needs from a task (see the module docstring)."""

    type: str
    primary: str  # the metric the per-sample score averages to
    higher_is_better: bool  # of the primary score
    needs_target: bool

    def metric_directions(self) -> dict[str, bool]:
        """Every metric the task reports, and whether higher is better."""
        ...

    def check_target(self, target: torch.Tensor | None, where: str) -> None:
        """Refuse a target this task cannot score (DataError naming ``where``)."""
        ...

    def start(self, roles: Sequence[str], reference: str, field: str) -> Accumulator: ...


# ---------------------------------------------------------------- shared checks


def _finite(out: torch.Tensor, role: str, field: str) -> None:
    if not all_finite(out):
        raise ModelOutputError(
            f"the {role} model produced NaN or infinite outputs on {field}",
            hint="the model or a compression pass is numerically broken",
        )


def _rows(out: torch.Tensor, n: int, role: str, field: str, inputs: Inputs, want: str) -> None:
    if out.dim() == 0 or out.shape[0] != n:
        raise ModelOutputError(
            f"the {role} model returned shape {tuple(out.shape)} for a batch of {n} samples; expected {want}",
            hint=f"check {field} matches the model's input ({_input_shape(inputs)})",
        )


def _input_shape(inputs: Inputs) -> str:
    import torch

    if isinstance(inputs, torch.Tensor):
        return f"x shape {tuple(inputs.shape)}"
    return f"inputs {describe(inputs)}"


def _need_target(target: torch.Tensor | None, task: str, where: str) -> torch.Tensor:
    if target is None:
        raise DataError(
            f"{where}: the {task} task needs a target, and the data has none",
            hint="name it with data.holdout.target (default y), or yield (inputs, target) from the factory",
        )
    return target


def _dtype(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def _pad(a: np.ndarray, n: int) -> np.ndarray:
    import numpy as np

    if len(a) >= n:
        return a
    padded: np.ndarray = np.concatenate([a, np.zeros(n - len(a), dtype=a.dtype)])
    return padded


def _cat(column: Column) -> np.ndarray:
    return column.values()


class Column:
    """One per-sample value per holdout sample, appended batch by batch into a single
    buffer that doubles when full.

    A list of one small array per batch (what the accumulators kept before) interleaves
    thousands of small blocks with each batch's freed activations and fragments the
    native heap: scoring 405,000 samples in batches of 256 grew the process by 92 MB for
    8 MB of Python-side data (``benchmarks/holdout_scale.py``). A doubling buffer makes
    a few large allocations, which the allocator maps and returns whole.
    """

    def __init__(self) -> None:
        self._buf: np.ndarray | None = None
        self._n = 0

    def append(self, values: np.ndarray) -> None:
        import numpy as np

        v = np.asarray(values).reshape(-1)
        end = self._n + len(v)
        if self._buf is not None and end <= len(self._buf) and v.dtype == self._buf.dtype:
            self._buf[self._n : end] = v  # the usual case: room, same type
            self._n = end
            return
        if self._buf is None:
            self._buf = np.empty(max(4096, len(v)), dtype=v.dtype)
        dtype = self._buf.dtype
        if dtype.kind in "ui" and v.dtype.kind in "ui":  # wider integers widen the buffer
            dtype = np.promote_types(dtype, v.dtype)
        if end > len(self._buf) or dtype != self._buf.dtype:
            size = max(end, 2 * len(self._buf)) if end > len(self._buf) else len(self._buf)
            grown = np.empty(size, dtype=dtype)
            grown[: self._n] = self._buf[: self._n]
            self._buf = grown
        self._buf[self._n : end] = v
        self._n = end

    def values(self, dtype: Any = None) -> np.ndarray:
        """The values appended so far (a copy), or an empty array of ``dtype``."""
        import numpy as np

        if self._buf is None:
            return np.zeros(0, dtype=dtype or np.float64)
        return self._buf[: self._n].copy()


# ---------------------------------------------------------------- classification


@dataclass
class Classification:
    """Single-label classification over ``(samples, classes)`` logits.

    Top-1 exactly as ci-compress always measured it (argmax, ties to the lowest
    index); ``top_k`` adds top-k accuracy; macro-F1 over the labels seen in the
    targets or predictions; per-label correct/total counts for the per-class table.
    """

    top_k: int | None = None
    type: str = "classification"
    primary: str = "accuracy"
    higher_is_better: bool = True
    needs_target: bool = True

    def metric_directions(self) -> dict[str, bool]:
        return {"accuracy": True, "top_k_accuracy": True, "macro_f1": True, "agreement": True}

    def check_target(self, target: torch.Tensor | None, where: str) -> None:
        y = _need_target(target, self.type, where)
        if y.dim() != 1:
            raise DataError(
                f"{where}: y has shape {tuple(y.shape)}, expected a 1-D vector of class labels"
            )
        if _dtype(y) not in INT_DTYPES:
            raise DataError(f"{where}: y has dtype {y.dtype}, expected integer class labels")
        if len(y) and int(y.min()) < 0:
            raise DataError(f"{where}: y contains negative labels ({int(y.min())})")

    def start(self, roles: Sequence[str], reference: str, field: str) -> Accumulator:
        return _ClassificationRun(self, list(roles), reference, field)


class _ClassificationRun:
    """Per batch only what needs the outputs: the checks, each model's top-1 prediction
    (kept per sample in the smallest integer type that holds the class count) and the
    top-k hits. Hits, agreement and the per-class counts are computed once, in
    :meth:`finish`, over the whole holdout: per batch they were a dozen small numpy and
    torch calls per model, a sixth of the evaluation time of the demo MLP
    (``benchmarks/holdout_scale.py``)."""

    def __init__(self, task: Classification, roles: list[str], reference: str, field: str):
        self.task, self.roles, self.reference, self.field = task, roles, reference, field
        self.preds: dict[str, Column] = {r: Column() for r in roles}
        self.classes = dict.fromkeys(roles, 0)  # the most outputs a batch had, per model
        self.labels = Column()
        self.topk: dict[str, Column] = {r: Column() for r in roles}
        self.n = 0

    def add(
        self, outputs: Mapping[str, torch.Tensor], target: torch.Tensor | None, inputs: Inputs
    ) -> None:
        y = _need_target(target, "classification", self.field)
        y_cpu = y.cpu()
        n = y_cpu.shape[0]
        top_label = int(y_cpu.max()) if n else -1
        for role in self.roles:
            out = outputs[role]
            if out.dim() != 2 or out.shape[0] != n:
                raise ModelOutputError(
                    f"the {role} model returned shape {tuple(out.shape)} for a batch of {n} samples; expected (samples, classes)",
                    hint=f"check {self.field} matches the model's input ({_input_shape(inputs)})",
                )
            classes = out.shape[1]
            if top_label >= classes:
                raise DataError(
                    f"{self.field}: label {top_label} is out of range for a model with {classes} outputs",
                    hint="labels must be 0 .. classes-1",
                )
            _finite(out, role, self.field)
            if classes > self.classes[role]:
                self.classes[role] = classes
            self.preds[role].append(_top1(out).astype(_label_type(classes)))
            k = self.task.top_k
            if k is not None:
                if k > classes:
                    raise ConfigError(
                        f"is {k}, but the {role} model has only {classes} outputs",
                        path="task.top_k",
                        hint=f"set task.top_k to at most {classes}",
                    )
                top = out.topk(k, dim=1).indices.cpu()
                self.topk[role].append((top == y_cpu[:, None]).any(dim=1).numpy())
        self.labels.append(y_cpu.numpy().astype(_label_type(top_label + 1)))
        self.n += n

    def finish(self) -> dict[str, RoleScores]:
        import numpy as np

        labels = self.labels.values(np.int64)
        class_total = np.bincount(labels, minlength=1) if len(labels) else labels
        reference = self.preds[self.reference].values(np.int64)
        out = {}
        for role in self.roles:
            pred = self.preds[role].values(np.int64)
            mask = pred == labels
            correct = int(np.count_nonzero(mask))
            n = self.n
            classes = self.classes[role]
            class_correct = _pad(np.bincount(labels[mask], minlength=classes), len(class_total))
            total = _pad(class_total, len(class_correct))
            metrics = {
                "accuracy": correct / n if n else 0.0,
                "macro_f1": _macro_f1(class_correct, total, np.bincount(pred, minlength=classes)),
                "agreement": int(np.count_nonzero(pred == reference)) / n if n else 0.0,
            }
            if self.task.top_k is not None:
                metrics["top_k_accuracy"] = float(_cat(self.topk[role]).mean()) if n else 0.0
            out[role] = RoleScores(
                samples=n,
                scores=mask.astype(np.float64),
                metrics=metrics,
                class_correct=class_correct,
                class_total=total,
            )
        return out


@functools.cache
def _label_type(classes: int) -> Any:
    """The smallest unsigned integer type that holds labels ``0 .. classes-1``."""
    import numpy as np

    return np.min_scalar_type(max(classes - 1, 0))


def _top1(out: torch.Tensor) -> np.ndarray:
    """Each row's argmax (ties to the lowest index, as ``torch.argmax``); numpy's for
    a CPU float tensor (a third cheaper on a batch of 256 x 10), torch's otherwise."""
    import torch

    if out.is_cpu and out.dtype in (torch.float32, torch.float64) and not out.requires_grad:
        top: np.ndarray = out.numpy().argmax(axis=1)
        return top
    return out.argmax(dim=1).cpu().numpy()


def _macro_f1(correct: np.ndarray, total: np.ndarray, predicted: np.ndarray) -> float:
    """Mean F1 over the labels that occur in the targets or the predictions."""
    import numpy as np

    n = max(len(correct), len(total), len(predicted))
    tp, t, p = _pad(correct, n), _pad(total, n), _pad(predicted, n)
    both = t + p
    seen = both > 0
    k = int(np.count_nonzero(seen))
    if not k:
        return 0.0
    # np.mean's own sum and division (the same bits) without its Python wrapper: this
    # ran 70 us per model per evaluation, a third of the task's final counts
    return float((2.0 * tp[seen] / both[seen]).sum() / k)


# ---------------------------------------------------------------- multilabel


@dataclass
class Multilabel:
    """Several labels per sample: ``(samples, labels)`` scores against a 0/1 target.

    A label is predicted when ``sigmoid(output) >= threshold`` (``activation:
    none``: the output itself, for models that return probabilities). The per-sample
    score is that sample's F1 (1.0 when both sets are empty).
    """

    threshold: float = 0.5
    activation: str = "sigmoid"
    type: str = "multilabel"
    primary: str = "f1"
    higher_is_better: bool = True
    needs_target: bool = True

    def metric_directions(self) -> dict[str, bool]:
        return {"f1": True, "exact_match": True, "agreement": True}

    def check_target(self, target: torch.Tensor | None, where: str) -> None:
        y = _need_target(target, self.type, where)
        if y.dim() != 2:
            raise DataError(
                f"{where}: the target has shape {tuple(y.shape)}, expected (samples, labels) of 0/1"
            )
        if y.numel() and not bool(((y == 0) | (y == 1)).all()):
            raise DataError(
                f"{where}: the multilabel target holds values other than 0 and 1",
                hint="encode the labels as a 0/1 matrix, one column per label",
            )

    def start(self, roles: Sequence[str], reference: str, field: str) -> Accumulator:
        return _MultilabelRun(self, list(roles), reference, field)


class _MultilabelRun:
    def __init__(self, task: Multilabel, roles: list[str], reference: str, field: str):
        self.task, self.roles, self.reference, self.field = task, roles, reference, field
        self.f1: dict[str, Column] = {r: Column() for r in roles}
        self.exact: dict[str, Column] = {r: Column() for r in roles}
        self.agree: dict[str, Column] = {r: Column() for r in roles}
        self.n = 0

    def add(
        self, outputs: Mapping[str, torch.Tensor], target: torch.Tensor | None, inputs: Inputs
    ) -> None:
        y = _need_target(target, "multilabel", self.field).bool()
        preds = {}
        for role in self.roles:
            out = outputs[role]
            _rows(out, len(y), role, self.field, inputs, f"(samples, labels) = {tuple(y.shape)}")
            if tuple(out.shape) != tuple(y.shape):
                raise ModelOutputError(
                    f"the {role} model returned shape {tuple(out.shape)}, the target has {tuple(y.shape)}",
                    hint="a multilabel model returns one score per label",
                )
            _finite(out, role, self.field)
            prob = out.float().sigmoid() if self.task.activation == "sigmoid" else out.float()
            p = prob >= self.task.threshold
            preds[role] = p
            inter = (p & y).sum(dim=1).double()
            size = p.sum(dim=1).double() + y.sum(dim=1).double()
            f1 = (2.0 * inter / size.clamp(min=1.0)).where(size > 0, inter.new_ones(()))
            self.f1[role].append(f1.cpu().numpy())
            self.exact[role].append((p == y).all(dim=1).cpu().numpy())
        for role in self.roles:
            self.agree[role].append((preds[role] == preds[self.reference]).all(dim=1).cpu().numpy())
        self.n += len(y)

    def finish(self) -> dict[str, RoleScores]:
        out = {}
        for role in self.roles:
            f1 = _cat(self.f1[role])
            out[role] = RoleScores(
                samples=self.n,
                scores=f1.astype("float64"),
                metrics={
                    "f1": float(f1.mean()) if self.n else 0.0,
                    "exact_match": float(_cat(self.exact[role]).mean()) if self.n else 0.0,
                    "agreement": float(_cat(self.agree[role]).mean()) if self.n else 0.0,
                },
            )
        return out


# ---------------------------------------------------------------- regression


@dataclass
class Regression:
    """Real-valued targets ``(samples,)`` or ``(samples, outputs)``.

    Per sample: the absolute error (mean over outputs), the primary score, lower is
    better; the squared error feeds RMSE. R² is computed per output from running sums
    and averaged (scikit-learn's ``uniform_average``); a constant target gives R² 1.0
    for a perfect fit, else 0.0 (scikit-learn's ``force_finite``).
    """

    type: str = "regression"
    primary: str = "mae"
    higher_is_better: bool = False
    needs_target: bool = True

    def metric_directions(self) -> dict[str, bool]:
        return {"mae": False, "rmse": False, "r2": True}

    def check_target(self, target: torch.Tensor | None, where: str) -> None:
        import torch

        y = _need_target(target, self.type, where)
        if y.dim() not in (1, 2):
            raise DataError(
                f"{where}: the target has shape {tuple(y.shape)}, expected (samples,) or (samples, outputs)"
            )
        if y.dtype == torch.bool or y.is_complex():
            raise DataError(f"{where}: the target has dtype {y.dtype}, expected real numbers")
        if not all_finite(y):
            raise DataError(
                f"{where}: the target contains {int((~torch.isfinite(y)).sum())} NaN or infinite values",
                hint="clean or impute the targets before gating",
            )

    def start(self, roles: Sequence[str], reference: str, field: str) -> Accumulator:
        return _RegressionRun(list(roles), field)


class _RegressionRun:
    def __init__(self, roles: list[str], field: str):
        self.roles, self.field = roles, field
        self.abs: dict[str, Column] = {r: Column() for r in roles}
        self.sq: dict[str, Column] = {r: Column() for r in roles}
        self.ss_res: dict[str, Any] = dict.fromkeys(roles, 0.0)
        self.sum_y: Any = 0.0
        self.sum_y2: Any = 0.0
        self.n = 0

    def add(
        self, outputs: Mapping[str, torch.Tensor], target: torch.Tensor | None, inputs: Inputs
    ) -> None:
        y = _need_target(target, "regression", self.field).double()
        y2 = y if y.dim() == 2 else y[:, None]
        for role in self.roles:
            out = outputs[role]
            _rows(out, len(y), role, self.field, inputs, f"{tuple(y.shape)} like the target")
            o = out.double()
            o = o if o.dim() == 2 else o.reshape(len(o), -1)
            if o.shape != y2.shape:
                raise ModelOutputError(
                    f"the {role} model returned shape {tuple(out.shape)}, the target has {tuple(y.shape)}",
                    hint="a regression model returns one value per target column",
                )
            _finite(out, role, self.field)
            err = o - y2
            self.abs[role].append(err.abs().mean(dim=1).cpu().numpy())
            self.sq[role].append((err * err).mean(dim=1).cpu().numpy())
            self.ss_res[role] = self.ss_res[role] + (err * err).sum(dim=0).cpu().numpy()
        self.sum_y = self.sum_y + y2.sum(dim=0).cpu().numpy()
        self.sum_y2 = self.sum_y2 + (y2 * y2).sum(dim=0).cpu().numpy()
        self.n += len(y)

    def finish(self) -> dict[str, RoleScores]:
        import numpy as np

        out = {}
        n = self.n
        for role in self.roles:
            abs_e, sq_e = _cat(self.abs[role]), _cat(self.sq[role])
            r2 = 0.0
            if n:
                ss_tot = np.asarray(self.sum_y2 - self.sum_y * self.sum_y / n, dtype=np.float64)
                ss_res = np.asarray(self.ss_res[role], dtype=np.float64)
                # A constant column: sums cancel to ~1e-16 rather than 0.
                flat = ss_tot <= 1e-12 * np.maximum(1.0, np.abs(np.asarray(self.sum_y2)))
                per = np.where(flat, np.where(ss_res <= 1e-12, 1.0, 0.0), 0.0)
                np.divide(ss_res, ss_tot, out=per, where=~flat)
                per = np.where(flat, per, 1.0 - per)
                r2 = float(per.mean())
            out[role] = RoleScores(
                samples=n,
                scores=abs_e.astype("float64"),
                metrics={
                    "mae": float(abs_e.mean()) if n else 0.0,
                    "rmse": math.sqrt(float(sq_e.mean())) if n else 0.0,
                    "r2": r2,
                },
            )
        return out


# ---------------------------------------------------------------- embedding


@dataclass
class Embedding:
    """Embeddings compared with the reference model's, sample by sample.

    Outputs ``(samples, dim)`` are used as they are; token states ``(samples, tokens,
    dim)`` are pooled: ``mean`` over the tokens the attention mask keeps (the input
    named ``mask``, all tokens when there is none), or ``cls`` (the first token).
    Per sample: the cosine similarity to the reference model's embedding. Nearest-
    neighbour agreement: for each of the first ``neighbours`` samples, whether its
    nearest other sample (by cosine) is the same as under the reference model.
    """

    pooling: str = "mean"
    mask: str = "attention_mask"
    neighbours: int = 1000
    type: str = "embedding"
    primary: str = "cosine"
    higher_is_better: bool = True
    needs_target: bool = False

    def metric_directions(self) -> dict[str, bool]:
        return {"cosine": True, "neighbour_agreement": True}

    def check_target(self, target: torch.Tensor | None, where: str) -> None:
        return None  # the reference model's embeddings are the target

    def pool(self, out: torch.Tensor, inputs: Inputs, role: str) -> torch.Tensor:
        if out.dim() == 2:
            return out.float()
        if out.dim() != 3:
            raise ModelOutputError(
                f"the {role} model returned shape {tuple(out.shape)}; the embedding task expects (samples, dim) or (samples, tokens, dim)",
                hint="point model.output at the embeddings or the token states",
            )
        if self.pooling == "none":
            raise ConfigError(
                f"is none, but the {role} model returns token states {tuple(out.shape)}",
                path="task.pooling",
                hint="set task.pooling to mean or cls",
            )
        if self.pooling == "cls":
            return out[:, 0].float()
        mask = inputs.get(self.mask) if isinstance(inputs, Mapping) else None
        if mask is None:
            return out.float().mean(dim=1)
        if tuple(mask.shape) != tuple(out.shape[:2]):
            raise DataError(
                f"the input {self.mask!r} has shape {tuple(mask.shape)}, the token states {tuple(out.shape)}",
                hint="task.mask names the (samples, tokens) attention mask",
            )
        w = mask.to(out.device).unsqueeze(-1).float()
        return (out.float() * w).sum(dim=1) / w.sum(dim=1).clamp(min=1e-9)

    def start(self, roles: Sequence[str], reference: str, field: str) -> Accumulator:
        return _EmbeddingRun(self, list(roles), reference, field)


class _EmbeddingRun:
    def __init__(self, task: Embedding, roles: list[str], reference: str, field: str):
        self.task, self.roles, self.reference, self.field = task, roles, reference, field
        self.cos: dict[str, Column] = {r: Column() for r in roles}
        self.kept: dict[str, list[torch.Tensor]] = {r: [] for r in roles}
        self.n_kept = 0
        self.n = 0

    def add(
        self, outputs: Mapping[str, torch.Tensor], target: torch.Tensor | None, inputs: Inputs
    ) -> None:
        import torch.nn.functional as F

        n = len(first_tensor(inputs))
        pooled = {}
        for role in self.roles:
            out = outputs[role]
            _rows(out, n, role, self.field, inputs, "(samples, dim) or (samples, tokens, dim)")
            _finite(out, role, self.field)
            pooled[role] = self.task.pool(out, inputs, role)
        ref = pooled[self.reference]
        for role in self.roles:
            if pooled[role].shape != ref.shape:
                raise ModelOutputError(
                    f"the {role} model's embeddings have shape {tuple(pooled[role].shape)}, the {self.reference}'s {tuple(ref.shape)}",
                    hint="the embedding task compares embeddings of the same size",
                )
            cos = F.cosine_similarity(pooled[role].double(), ref.double(), dim=1)
            self.cos[role].append(cos.cpu().numpy())
        room = self.task.neighbours - self.n_kept
        if room > 0:
            for role in self.roles:
                self.kept[role].append(F.normalize(pooled[role][:room], dim=1).cpu())
            self.n_kept += min(room, n)
        self.n += n

    def finish(self) -> dict[str, RoleScores]:
        import torch

        nearest = {}
        if self.n_kept >= 2:
            for role in self.roles:
                e = torch.cat(self.kept[role])
                sims = e @ e.T
                sims.fill_diagonal_(-math.inf)
                nearest[role] = sims.argmax(dim=1)
        out = {}
        for role in self.roles:
            cos = _cat(self.cos[role])
            metrics = {"cosine": float(cos.mean()) if self.n else 0.0}
            if nearest:
                same = nearest[role] == nearest[self.reference]
                metrics["neighbour_agreement"] = float(same.double().mean())
            out[role] = RoleScores(samples=self.n, scores=cos.astype("float64"), metrics=metrics)
        return out


# ---------------------------------------------------------------- language model


@dataclass
class LanguageModel:
    """A causal language model: logits ``(samples, tokens, vocab)``.

    The target is the token ids (``(samples, tokens)``, as ``labels`` in Hugging Face:
    not shifted; the task shifts); without a target, the input named ``tokens`` (or the
    only, or first, input tensor) is used. Positions whose label is ``ignore_index``,
    or whose attention mask (the input named ``mask``) is 0, are left out. Per sample:
    the mean negative log-likelihood of its tokens (0.0 for a sample with none, the
    same for every model). Aggregates are per token: ``nll``, ``perplexity`` =
    exp(nll), ``next_token_accuracy`` (argmax = label), ``next_token_agreement``
    (argmax = the reference model's argmax).
    """

    tokens: str = "input_ids"
    mask: str = "attention_mask"
    ignore_index: int = -100
    type: str = "language-model"
    primary: str = "nll"
    higher_is_better: bool = False
    needs_target: bool = False

    def metric_directions(self) -> dict[str, bool]:
        return {
            "nll": False,
            "perplexity": False,
            "next_token_accuracy": True,
            "next_token_agreement": True,
        }

    def check_target(self, target: torch.Tensor | None, where: str) -> None:
        if target is None:
            return
        if target.dim() != 2 or _dtype(target) not in INT_DTYPES:
            raise DataError(
                f"{where}: the target has shape {tuple(target.shape)} and dtype {target.dtype}, expected (samples, tokens) integer token ids",
                hint="or give no target: the task then predicts the input token ids",
            )

    def labels(self, target: torch.Tensor | None, inputs: Inputs, field: str) -> torch.Tensor:
        """(samples, tokens) labels with ignored positions set to ``ignore_index``."""
        if target is not None:
            labels = target
        elif isinstance(inputs, Mapping):
            if self.tokens not in inputs:
                raise DataError(
                    f"{field}: the language-model task takes its labels from the input {self.tokens!r}, "
                    f"which the batch does not hold (inputs {describe(inputs)})",
                    hint="set task.tokens to the token-id input, or give a target",
                )
            labels = inputs[self.tokens]
        else:
            labels = first_tensor(inputs)
        labels = labels.long()
        if isinstance(inputs, Mapping) and self.mask in inputs:
            mask = inputs[self.mask]
            if tuple(mask.shape) == tuple(labels.shape):
                labels = labels.masked_fill(mask.to(labels.device) == 0, self.ignore_index)
        return labels

    def start(self, roles: Sequence[str], reference: str, field: str) -> Accumulator:
        return _LanguageModelRun(self, list(roles), reference, field)


class _LanguageModelRun:
    def __init__(self, task: LanguageModel, roles: list[str], reference: str, field: str):
        self.task, self.roles, self.reference, self.field = task, roles, reference, field
        self.sample_nll: dict[str, Column] = {r: Column() for r in roles}
        self.nll = dict.fromkeys(roles, 0.0)
        self.right = dict.fromkeys(roles, 0)
        self.agree = dict.fromkeys(roles, 0)
        self.tokens = 0
        self.n = 0

    def add(
        self, outputs: Mapping[str, torch.Tensor], target: torch.Tensor | None, inputs: Inputs
    ) -> None:
        import torch.nn.functional as F

        labels = self.task.labels(target, inputs, self.field)
        n, t = labels.shape
        shifted = labels[:, 1:]
        valid = shifted != self.task.ignore_index
        count = valid.sum(dim=1)
        argmax = {}
        for role in self.roles:
            out = outputs[role]
            if out.dim() != 3 or tuple(out.shape[:2]) != (n, t):
                raise ModelOutputError(
                    f"the {role} model returned shape {tuple(out.shape)}; the language-model task expects (samples, tokens, vocab) = ({n}, {t}, vocab)",
                    hint="point model.output at the logits",
                )
            _finite(out, role, self.field)
            logits = out[:, :-1].float()
            nll = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]),
                shifted.to(out.device).reshape(-1),
                ignore_index=self.task.ignore_index,
                reduction="none",
            ).reshape(n, t - 1)
            nll = nll.double().cpu() * valid
            per = nll.sum(dim=1) / count.clamp(min=1)
            self.sample_nll[role].append(per.numpy())
            self.nll[role] += float(nll.sum())
            pred = logits.argmax(dim=-1).cpu()
            argmax[role] = pred
            self.right[role] += int(((pred == shifted) & valid).sum())
        for role in self.roles:
            self.agree[role] += int(((argmax[role] == argmax[self.reference]) & valid).sum())
        self.tokens += int(valid.sum())
        self.n += n

    def finish(self) -> dict[str, RoleScores]:
        out = {}
        tok = self.tokens
        for role in self.roles:
            nll = self.nll[role] / tok if tok else 0.0
            out[role] = RoleScores(
                samples=self.n,
                scores=_cat(self.sample_nll[role]).astype("float64"),
                metrics={
                    "nll": nll,
                    "perplexity": math.exp(nll) if nll < 700 else math.inf,
                    "next_token_accuracy": self.right[role] / tok if tok else 0.0,
                    "next_token_agreement": self.agree[role] / tok if tok else 0.0,
                },
            )
        return out


# ---------------------------------------------------------------- custom


@dataclass
class Custom:
    """A user metric: ``metric: package.module:function`` called as
    ``function(output, target)`` per model and batch, returning one score per sample
    (a tensor, array or list of length samples). Its name is the function's name."""

    metric: str
    function: Callable[..., Any]
    higher_is_better: bool = True
    type: str = "custom"
    needs_target: bool = False
    primary: str = field(init=False)

    def __post_init__(self) -> None:
        self.primary = self.metric.rpartition(":")[2]

    def metric_directions(self) -> dict[str, bool]:
        return {self.primary: self.higher_is_better}

    def check_target(self, target: torch.Tensor | None, where: str) -> None:
        return None  # the function decides what it needs

    def start(self, roles: Sequence[str], reference: str, field: str) -> Accumulator:
        return _CustomRun(self, list(roles), field)


class _CustomRun:
    def __init__(self, task: Custom, roles: list[str], field: str):
        self.task, self.roles, self.field = task, roles, field
        self.scores: dict[str, Column] = {r: Column() for r in roles}
        self.n = 0

    def add(
        self, outputs: Mapping[str, torch.Tensor], target: torch.Tensor | None, inputs: Inputs
    ) -> None:
        import numpy as np
        import torch

        n = len(first_tensor(inputs))
        name = self.task.metric
        for role in self.roles:
            out = outputs[role]
            _finite(out, role, self.field)
            try:
                got = self.task.function(out, target)
            except Exception as e:
                raise ModelOutputError(
                    f"task.metric {name} raised {type(e).__name__} on the {role} model's outputs: {e}",
                    hint="the metric is called as function(output, target) once per batch and model",
                ) from None
            if isinstance(got, torch.Tensor):
                got = got.detach().cpu().double().numpy()
            try:
                arr = np.asarray(got, dtype=np.float64)
            except (TypeError, ValueError):
                arr = np.zeros((0, 0))
            if arr.shape != (n,):
                raise ModelOutputError(
                    f"task.metric {name} returned {_shape_of(got)} for a batch of {n} samples; expected one score per sample, shape ({n},)",
                    hint="return a 1-D tensor or array with one score per sample",
                )
            bad = int((~np.isfinite(arr)).sum())
            if bad:
                raise ModelOutputError(
                    f"task.metric {name} returned {bad} NaN or infinite scores for the {role} model",
                    hint="return a finite score for every sample",
                )
            self.scores[role].append(arr)
        self.n += n

    def finish(self) -> dict[str, RoleScores]:
        out = {}
        for role in self.roles:
            s = _cat(self.scores[role]).astype("float64")
            out[role] = RoleScores(
                samples=self.n,
                scores=s,
                metrics={self.task.primary: float(s.mean()) if self.n else 0.0},
            )
        return out


def _shape_of(value: Any) -> str:
    shape = getattr(value, "shape", None)
    if shape is not None:
        return f"shape {tuple(shape)}"
    if isinstance(value, list | tuple):
        return f"a {type(value).__name__} of {len(value)}"
    return f"a {type(value).__name__}"


# ---------------------------------------------------------------- from the config


def make_task(config: TaskConfig | None = None, *, base_dir: Path | None = None) -> Task:
    """The task the config's ``task:`` section describes (classification when absent).

    ``base_dir`` (the config's folder) is importable for a custom ``task.metric``.
    """
    if config is None or config.type == "classification":
        return Classification(top_k=config.top_k if config is not None else None)
    if config.type == "multilabel":
        return Multilabel(threshold=config.threshold, activation=config.activation)
    if config.type == "regression":
        return Regression()
    if config.type == "embedding":
        return Embedding(pooling=config.pooling, mask=config.mask, neighbours=config.neighbours)
    if config.type == "language-model":
        return LanguageModel(
            tokens=config.tokens, mask=config.mask, ignore_index=config.ignore_index
        )
    if config.type == "custom":
        assert config.metric is not None  # the config validates it
        fn = import_factory(config.metric, path="task.metric", base_dir=base_dir)
        return Custom(metric=config.metric, function=fn, higher_is_better=config.higher_is_better)
    raise ConfigError(f"unknown task type {config.type!r}", path="task.type")
