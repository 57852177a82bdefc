"""The ``task:`` section and the thresholds on a task's metrics by name.

A task says what the model's output means (:mod:`ci_compress.evaluation.tasks` scores
it). Each task reports metrics under fixed names, each better when higher or when
lower; :data:`TASK_METRICS` is that table, and the config checks threshold names
against it (a misspelt metric would otherwise switch a check off). The evaluation side
reports exactly these names (``tests/unit/test_tasks.py`` checks both agree).

Thresholds on a metric (``thresholds.metrics: {perplexity: {max_relative_increase:
0.05}}``) are comparisons of the student's value with the teacher's:

* higher-is-better metrics: ``max_drop`` (teacher - student, in the metric's unit),
  ``max_relative_drop`` ((teacher - student) / teacher), ``min_recovery`` (student /
  teacher);
* lower-is-better metrics (errors, NLL, perplexity): ``max_increase`` (student -
  teacher) and ``max_relative_increase`` ((student - teacher) / teacher);
* either: ``min_value`` / ``max_value``, bounds on the student's value itself.

Classification keeps its historical names too (``thresholds.max_accuracy_drop`` in
percentage points, ``min_recovery``, ...); they apply to the classification task only.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from ci_compress.frozen import Frozen
from ci_compress.refs import FACTORY_RE

TaskType = Literal[
    "classification", "multilabel", "regression", "embedding", "language-model", "custom"
]

TASK_METRICS: dict[str, dict[str, bool]] = {
    "classification": {
        "accuracy": True,
        "top_k_accuracy": True,
        "macro_f1": True,
        "agreement": True,
    },
    "multilabel": {"f1": True, "exact_match": True, "agreement": True},
    "regression": {"mae": False, "rmse": False, "r2": True},
    "embedding": {"cosine": True, "neighbour_agreement": True},
    "language-model": {
        "nll": False,
        "perplexity": False,
        "next_token_accuracy": True,
        "next_token_agreement": True,
    },
}
"""Task -> metric name -> higher is better. ``custom`` reports one metric, named after
its function, in the direction ``task.higher_is_better`` gives."""

PRIMARY: dict[str, str] = {
    "classification": "accuracy",
    "multilabel": "f1",
    "regression": "mae",
    "embedding": "cosine",
    "language-model": "nll",
}
"""The metric each task's per-sample score averages to (the paired statistics' figure)."""

# Figures the report holds for every model beside the task's metrics (a custom metric
# may not take these names).
RESERVED_NAMES = frozenset(
    {
        "accuracy",
        "agreement",
        "bits_per_weight",
        "correct",
        "file_bytes",
        "latency_ms",
        "memory_bytes",
        "nonzero_parameters",
        "parameters",
        "samples",
        "sparsity",
    }
)

# option -> the task types it applies to
_OPTIONS: dict[str, tuple[str, ...]] = {
    "top_k": ("classification",),
    "threshold": ("multilabel",),
    "activation": ("multilabel",),
    "pooling": ("embedding",),
    "neighbours": ("embedding",),
    "mask": ("embedding", "language-model"),
    "tokens": ("language-model",),
    "ignore_index": ("language-model",),
    "metric": ("custom",),
    "higher_is_better": ("custom",),
}


class TaskConfig(Frozen):
    """What the model's output means, and how student and teacher are compared."""

    type: TaskType = Field(
        "classification",
        description="classification (top-1, default), multilabel, regression, embedding, language-model or custom.",
    )
    top_k: int | None = Field(
        None,
        ge=2,
        le=1000,
        description="classification: also report top-k accuracy (top_k_accuracy).",
    )
    threshold: float = Field(
        0.5,
        description="multilabel: a label is predicted when its (sigmoid) score is at least this.",
    )
    activation: Literal["sigmoid", "none"] = Field(
        "sigmoid",
        description="multilabel: sigmoid for logits, none when the model returns probabilities.",
    )
    pooling: Literal["mean", "cls", "none"] = Field(
        "mean",
        description="embedding: how token states (samples, tokens, dim) become one embedding: mean over the attention mask, cls (first token), none (the model returns (samples, dim)).",
    )
    neighbours: int = Field(
        1000,
        ge=0,
        le=20000,
        description="embedding: nearest-neighbour agreement on the first N samples (their embeddings are kept in memory; 0: off).",
    )
    mask: str = Field(
        "attention_mask",
        min_length=1,
        description="embedding, language-model: the input holding the attention mask (positions with 0 are left out).",
    )
    tokens: str = Field(
        "input_ids",
        min_length=1,
        description="language-model: the input holding the token ids, the labels when the data has no target.",
    )
    ignore_index: int = Field(
        -100, description="language-model: label value of positions to leave out."
    )
    metric: str | None = Field(
        None,
        pattern=FACTORY_RE,
        description="custom: package.module:function(output, target) returning one score per sample.",
    )
    higher_is_better: bool = Field(
        True, description="custom: whether a higher score of `metric` is better."
    )

    @model_validator(mode="after")
    def _options_fit_the_type(self) -> TaskConfig:
        defaults = {name: f.default for name, f in type(self).model_fields.items()}
        for option, types in _OPTIONS.items():
            if self.type not in types and getattr(self, option) != defaults[option]:
                raise ValueError(
                    f"task.{option}: applies to the {' and '.join(types)} task, not {self.type}"
                )
        if self.type == "custom" and self.metric is None:
            raise ValueError("task.metric: the custom task needs metric: package.module:function")
        if self.type == "custom" and self.primary() in RESERVED_NAMES:
            raise ValueError(
                f"task.metric: the function's name {self.primary()!r} is a figure every gate "
                "reports (the report would hold two values under one name); rename the function"
            )
        return self

    def metric_directions(self) -> dict[str, bool]:
        """The metrics this task reports, and whether higher is better."""
        if self.type == "custom":
            assert self.metric is not None
            return {self.metric.rpartition(":")[2]: self.higher_is_better}
        return dict(TASK_METRICS[self.type])

    def primary(self) -> str:
        if self.type == "custom":
            assert self.metric is not None
            return self.metric.rpartition(":")[2]
        return PRIMARY[self.type]


HIGHER_RULES = ("max_drop", "max_relative_drop", "min_recovery")
LOWER_RULES = ("max_increase", "max_relative_increase")


class MetricThresholds(Frozen):
    """Limits on one metric of the task, student against teacher (docs/configuration.md, "Tasks")."""

    max_drop: float | None = Field(
        None,
        ge=0,
        description="Higher-is-better metrics: largest teacher - student, in the metric's unit.",
    )
    max_relative_drop: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Higher-is-better metrics: largest (teacher - student) / teacher.",
    )
    min_recovery: float | None = Field(
        None, gt=0, description="Higher-is-better metrics: smallest student / teacher."
    )
    max_increase: float | None = Field(
        None,
        ge=0,
        description="Lower-is-better metrics: largest student - teacher, in the metric's unit.",
    )
    max_relative_increase: float | None = Field(
        None, ge=0, description="Lower-is-better metrics: largest (student - teacher) / teacher."
    )
    min_value: float | None = Field(None, description="Smallest allowed student value.")
    max_value: float | None = Field(None, description="Largest allowed student value.")

    def active(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.model_dump().items() if v is not None}


def check_metric_thresholds(
    metrics: dict[str, MetricThresholds], task: TaskConfig, suggest: Any
) -> None:
    """Each thresholded metric exists for the task and each limit fits its direction.

    ``suggest(word, choices)`` is the config's did-you-mean. Raises ValueError with the
    field path first (``thresholds.metrics.<name>...: ...``).
    """
    directions = task.metric_directions()
    for name, limits in metrics.items():
        where = f"thresholds.metrics.{name}"
        if name not in directions:
            raise ValueError(
                f"{where}: the {task.type} task has no metric {name!r}{suggest(name, directions)}; "
                f"its metrics: {', '.join(directions)}"
            )
        if not limits.active():
            raise ValueError(f"{where}: set at least one limit")
        higher = directions[name]
        wrong = LOWER_RULES if higher else HIGHER_RULES
        for rule in limits.active():
            if rule in wrong:
                fits = HIGHER_RULES if higher else LOWER_RULES
                raise ValueError(
                    f"{where}.{rule}: {name} is {'higher' if higher else 'lower'}-is-better; "
                    f"use {', '.join(fits)}, min_value or max_value"
                )
