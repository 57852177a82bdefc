"""The figure tune compares trials on: top-1 accuracy, or the task's primary metric.

A classification study reads ``student.accuracy`` (percent in every line, drops in
points), as it always did. Another task's study reads its primary metric
(``Task.primary``: ``mae`` for regression, ``nll`` for a language model, ...) under its
own name, ``student.<metric>``, with its change ``delta.<metric>.drop`` (higher is
better) or ``delta.<metric>.increase`` (lower is better) in the metric's units.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ci_compress.evaluation.tasks import make_task

if TYPE_CHECKING:
    from ci_compress.config import LoadedConfig


@dataclass(frozen=True)
class Quality:
    task: str = "classification"
    metric: str = "accuracy"
    higher_is_better: bool = True

    @property
    def classification(self) -> bool:
        return self.task == "classification"

    @property
    def change(self) -> str:
        """'drop' or 'increase': the worse direction of the metric."""
        return "drop" if self.higher_is_better else "increase"

    def keys(self) -> tuple[str, ...]:
        """The figures a trial keeps for it (``teacher.``, ``student.``, its change)."""
        if self.classification:
            return ("teacher.accuracy", "student.accuracy", "delta.accuracy_drop_points")
        return (
            f"teacher.{self.metric}",
            f"student.{self.metric}",
            f"delta.{self.metric}.{self.change}",
        )

    def value(self, figures: Mapping[str, float], role: str = "student") -> float | None:
        return figures.get(f"{role}.{self.metric}")

    def better(self, a: float, b: float) -> bool:
        """``a`` is strictly better than ``b``."""
        return a > b if self.higher_is_better else a < b

    def fmt(self, value: float) -> str:
        return f"{100 * value:.2f}%" if self.classification else f"{value:.4g}"

    def describe(self, figures: Mapping[str, float]) -> str:
        """'accuracy 97.10% (drop 0.80 points)', or 'mae 0.4691 (increase 0.009944)'."""
        value = self.value(figures)
        if value is None:
            return f"{self.metric} not measured"
        if self.classification:
            drop = figures.get("delta.accuracy_drop_points")
            tail = "" if drop is None else f" (drop {drop:.2f} points)"
            return f"accuracy {self.fmt(value)}{tail}"
        change = figures.get(f"delta.{self.metric}.{self.change}")
        tail = "" if change is None else f" ({self.change} {change:.4g})"
        return f"{self.metric} {self.fmt(value)}{tail}"


def quality_of(loaded: LoadedConfig) -> Quality:
    """The config's task's quality figure."""
    task = make_task(loaded.config.task, base_dir=loaded.base_dir)
    if task.type == "classification":
        return Quality()
    return Quality(task=task.type, metric=task.primary, higher_is_better=task.higher_is_better)
