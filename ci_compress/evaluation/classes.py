"""Per-class figures: each class's accuracy and drop, the worst class, and the table.

Built from the per-label counts evaluation accumulates (two integer vectors per model),
so a further role (a champion baseline) adds columns, not a new structure.
"""

from __future__ import annotations

from collections.abc import Mapping
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


def per_class_table(
    results: Mapping[str, TaskMetrics], *, reference: str = "teacher"
) -> dict[str, Any]:
    """Per-class accuracy of every role, and each role's drop against ``reference``.

    Roles are whatever was evaluated (teacher, student, and e.g. a champion baseline):
    every row holds ``correct``, ``accuracy`` and ``drop_points`` keyed by role, so a
    further role adds columns, not a new structure. ``worst`` names, per compared role,
    the class with the largest drop (ties: the lowest label).
    """
    roles = list(results)
    counts = {role: results[role].class_counts() for role in roles}
    if reference not in counts or not counts[reference]:
        return {}
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
        classes.append(
            {
                "label": label,
                "samples": samples,
                "correct": correct,
                "accuracy": accuracy,
                "drop_points": row_drops,
            }
        )
    worst = {}
    for r, role_drops in drops.items():
        w = worst_class(role_drops)
        if w is not None:
            worst[r] = {"label": w[0], "drop_points": w[1]}
    return {"reference": reference, "roles": roles, "classes": classes, "worst": worst}
