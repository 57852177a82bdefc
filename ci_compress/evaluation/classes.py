"""Per-class figures: each class's accuracy and drop, the worst class, and the table.

Built from the per-label counts evaluation accumulates (two integer vectors per model),
so a further role (a champion baseline) adds columns, not a new structure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ci_compress.evaluation.metrics import TaskMetrics


def class_drops(teacher: Mapping[str, float], student: Mapping[str, float]) -> dict[str, float]:
    """Per-class accuracy drop in points (teacher - student), for classes both were scored on."""
    return {k: (teacher[k] - student[k]) * 100.0 for k in teacher if k in student}


def worst_class(drops: Mapping[str, float]) -> tuple[str, float] | None:
    """The class with the largest drop (ties: the first label in sort order), or None."""
    if not drops:
        return None
    label = min(drops, key=lambda k: (-drops[k], _label_key(k)))
    return label, drops[label]


def _label_key(label: str) -> tuple[int, int | str]:
    return (0, int(label)) if label.lstrip("-").isdigit() else (1, label)


def class_figures(
    teacher: TaskMetrics, student: TaskMetrics, *, limit: float | None = None
) -> tuple[dict[str, float], dict[str, str]]:
    """The worst per-class drop (``delta.max_class_drop_points``) and a note naming the
    class, and every other class over ``limit`` when one is given."""
    drops = class_drops(teacher.class_accuracy(), student.class_accuracy())
    worst = worst_class(drops)
    if worst is None:
        return {}, {}
    label, drop = worst
    note = f"class {label}"
    others = [
        k
        for k in sorted(drops, key=_label_key)
        if k != label and limit is not None and drops[k] > limit
    ]
    if others:
        note += f"; also over the limit: class {', '.join(others)}"
    return {"delta.max_class_drop_points": drop}, {"delta.max_class_drop_points": note}


@dataclass(frozen=True)
class ClassRow:
    """One label of the holdout: its samples, and per role the correct count, accuracy
    and (for every role but the reference) the drop in points."""

    label: str
    samples: int
    correct: Mapping[str, int]
    accuracy: Mapping[str, float]
    drop_points: Mapping[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "samples": self.samples,
            "correct": dict(self.correct),
            "accuracy": dict(self.accuracy),
            "drop_points": dict(self.drop_points),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ClassRow:
        return cls(
            label=str(data["label"]),
            samples=int(data["samples"]),
            correct={k: int(v) for k, v in data["correct"].items()},
            accuracy={k: float(v) for k, v in data["accuracy"].items()},
            drop_points={k: float(v) for k, v in data["drop_points"].items()},
        )


@dataclass(frozen=True)
class WorstClass:
    label: str
    drop_points: float


@dataclass(frozen=True)
class PerClass:
    """The per-class table of a gate (the report's ``per_class`` section).

    ``max_class_drop`` and ``flagged`` (the labels whose student drop exceeds it) are
    set when that threshold is configured.
    """

    reference: str
    roles: tuple[str, ...]
    classes: tuple[ClassRow, ...]
    worst: Mapping[str, WorstClass]  # per compared role
    max_class_drop: float | None = None
    flagged: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "reference": self.reference,
            "roles": list(self.roles),
            "classes": [row.to_dict() for row in self.classes],
            "worst": {
                role: {"label": w.label, "drop_points": w.drop_points}
                for role, w in self.worst.items()
            },
        }
        if self.max_class_drop is not None:
            out["max_class_drop"] = self.max_class_drop
            out["flagged"] = list(self.flagged)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PerClass:
        limit = data.get("max_class_drop")
        return cls(
            reference=str(data["reference"]),
            roles=tuple(str(r) for r in data["roles"]),
            classes=tuple(ClassRow.from_dict(row) for row in data["classes"]),
            worst={
                role: WorstClass(str(w["label"]), float(w["drop_points"]))
                for role, w in data.get("worst", {}).items()
            },
            max_class_drop=None if limit is None else float(limit),
            flagged=tuple(str(label) for label in data.get("flagged") or ()),
        )


def per_class_table(
    results: Mapping[str, TaskMetrics],
    *,
    reference: str = "teacher",
    max_class_drop: float | None = None,
) -> PerClass | None:
    """Per-class accuracy of every role, and each role's drop against ``reference``.

    Roles are whatever was evaluated (teacher, student, and e.g. a champion baseline):
    every row holds ``correct``, ``accuracy`` and ``drop_points`` keyed by role, so a
    further role adds columns, not a new structure. ``worst`` names, per compared role,
    the class with the largest drop (ties: the lowest label). With ``max_class_drop``,
    ``flagged`` lists the classes whose student drop exceeds it. None when the
    reference has no per-class counts.
    """
    roles = list(results)
    counts = {role: results[role].class_counts() for role in roles}
    if reference not in counts or not counts[reference]:
        return None
    classes = []
    drops: dict[str, dict[str, float]] = {r: {} for r in roles if r != reference}
    for label in sorted(counts[reference], key=int):
        samples = counts[reference][label][1]
        correct = {r: counts[r].get(label, (0, samples))[0] for r in roles}
        accuracy = {r: c / samples for r, c in correct.items()}
        row_drops = {
            r: (accuracy[reference] - accuracy[r]) * 100.0 for r in roles if r != reference
        }
        for r, drop in row_drops.items():
            drops[r][label] = drop
        classes.append(ClassRow(label, samples, correct, accuracy, row_drops))
    worst = {}
    for r, role_drops in drops.items():
        w = worst_class(role_drops)
        if w is not None:
            worst[r] = WorstClass(w[0], w[1])
    flagged: tuple[str, ...] = ()
    if max_class_drop is not None:
        flagged = tuple(row.label for row in classes if row.drop_points["student"] > max_class_drop)
    return PerClass(
        reference=reference,
        roles=tuple(roles),
        classes=tuple(classes),
        worst=worst,
        max_class_drop=max_class_drop,
        flagged=flagged,
    )
