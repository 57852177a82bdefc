"""Explain a verdict: which layer costs the accuracy (or the task's primary metric), and
what to exclude to pass.

:func:`explain` compresses the teacher once per layer, with the configured passes
restricted to that one layer (``include: [layer]``, every other layer untouched), packs
and reloads each student as it would ship, and measures the accuracy drop each layer
causes on the holdout. Layers are ranked by that drop. Then it searches an ``exclude:``
list greedily: exclude the most sensitive layer, run the full configured compression
with it excluded, check the accuracy thresholds; add the next layer until they are met.
Every step is a real run, so the suggestion is verified, not predicted. Each student is
measured where it will serve, as the gate measures it: with ``ship.runtime`` onnxruntime
or openvino it is converted (and int8-quantized by that runtime, ``ship.quantize``), and
its accuracy and bytes are those of the runtime's artifact.

On a task other than classification, layers are ranked by the task's primary metric
(``Task.primary``: ``mae`` for regression, ``nll`` for a language model, ...) in its
direction: a layer's ``drop_points`` is then how much worse that metric gets, in the
metric's own units (teacher - student when higher is better, student - teacher when
lower is), its ``accuracy`` the metric's value; the exclude list is searched until the
``thresholds.metrics`` limits are met. The result names the metric (``metric`` in
explain.json, present only then), and the renderers label the table and chart with it.
Classification's result is unchanged: top-1 accuracy, drops in percentage points.

It works over whatever passes are configured: a pass only has to honour
``include``/``exclude`` and report the modules it touched (``PassRecord.modules``), as
every registered pass does. A "layer" is a module of the teacher; modules a pass
creates inside it (say ``fc.0`` when a pass splits ``fc``) count towards that layer.

The library returns an :class:`ExplainResult`; rendering (terminal table, Markdown,
bar chart) lives in :mod:`ci_compress.reporting.explain` and never decides anything.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ci_compress.ci.env import detect
from ci_compress.evaluation.classes import class_drops, class_figures, worst_class
from ci_compress.evaluation.metrics import score
from ci_compress.evaluation.tasks import Classification
from ci_compress.files import atomic_write, remove_files
from ci_compress.gate import ACCURACY_THRESHOLDS, decide, derive, metric_figures, metric_rules
from ci_compress.packing.runtimes import artifact_paths
from ci_compress.progress import warn_of
from ci_compress.record import record_explain
from ci_compress.reporting.explain import markdown_section, write_chart
from ci_compress.stages import (
    apply_passes,
    load_inputs,
    serve,
    set_determinism,
    ship,
)
from ci_compress.tracking import make_tracker

if TYPE_CHECKING:
    from ci_compress.config import LoadedConfig
    from ci_compress.evaluation.metrics import TaskMetrics
    from ci_compress.evaluation.tasks import Task
    from ci_compress.passes.base import PassConfig
    from ci_compress.stages import Inputs

Progress = Callable[[str], None]


@dataclass(frozen=True)
class LayerSensitivity:
    """The effect of compressing one layer alone."""

    layer: str
    kind: str  # the teacher module's class, e.g. Conv2d
    passes: tuple[str, ...]  # pass types that touched it, in order
    parameters: int  # of the teacher layer
    # student with only this layer compressed (another task: its primary metric)
    accuracy: float
    # teacher - that student, percentage points (another task: how much worse the
    # primary metric gets, in its units)
    drop_points: float
    file_bytes: int  # shipped size with only this layer compressed
    bytes_saved: int  # against the uncompressed teacher packed the same way
    worst_class: str | None = None
    worst_class_drop_points: float | None = None


@dataclass(frozen=True)
class ExcludeStep:
    """One verified run of the full compression with some layers excluded."""

    exclude: tuple[str, ...]
    accuracy: float
    drop_points: float
    file_bytes: int
    figures: dict[str, float]
    accuracy_passed: bool  # the accuracy thresholds are met
    gate_passed: bool  # every threshold that explain can measure (no latency) is met
    failures: tuple[str, ...] = ()


@dataclass
class ExplainResult:
    teacher_accuracy: float
    teacher_file_bytes: int
    samples: int
    thresholds: dict[str, float]
    full: ExcludeStep  # the configuration as given
    layers: list[LayerSensitivity]  # ranked, most sensitive first
    steps: list[ExcludeStep]  # the greedy search, in order (full config first)
    suggested_exclude: list[str] | None  # None: no exclude list met the thresholds
    suggested_passes: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # the ranking metric of a task other than classification: {"task", "name",
    # "higher_is_better"}; None for classification (top-1 accuracy)
    metric: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        extra = {} if self.metric is None else {"metric": dict(self.metric)}
        return {
            **extra,
            "teacher_accuracy": self.teacher_accuracy,
            "teacher_file_bytes": self.teacher_file_bytes,
            "samples": self.samples,
            "thresholds": self.thresholds,
            "full": asdict(self.full),
            "layers": [asdict(layer) for layer in self.layers],
            "steps": [asdict(s) for s in self.steps],
            "suggested_exclude": self.suggested_exclude,
            "suggested_passes": self.suggested_passes,
            "notes": self.notes,
        }


# ---------------------------------------------------------------- the analysis


def explain(
    loaded: LoadedConfig,
    *,
    report_dir: Path | None = None,
    progress: Progress | None = None,
    fetch: Callable[[str, Path], Path] | None = None,
) -> ExplainResult:
    """Rank layers by the accuracy drop their compression causes; suggest an exclude list.

    ``fetch`` downloads a ``model.uri`` from MLflow (the gate passes its own).
    """

    cfg = loaded.config
    say = progress or (lambda _msg: None)
    out_dir = report_dir or loaded.resolve(cfg.report.dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    set_determinism(cfg.runtime.seed, cfg.runtime.threads)
    inputs = load_inputs(loaded, out_dir, fetch=fetch)
    teacher_m = score(
        {"teacher": inputs.teacher.module},
        inputs.holdout,
        batch_size=cfg.data.batch_size,
        task=inputs.task,
        output=cfg.model.output,
        device=cfg.runtime.device,
    )["teacher"]
    task = inputs.task or Classification()
    classification = task.type == "classification"
    thresholds = cfg.thresholds.active()
    # The quality thresholds, the ones an exclude list can fix: accuracy's, or the
    # limits on the task's metrics.
    acc_thresholds = {
        k: v
        for k, v in thresholds.items()
        if (k in ACCURACY_THRESHOLDS if classification else k.startswith("metrics."))
    }
    # Latency is not measured here: every other threshold is checked.
    gate_thresholds = {k: v for k, v in thresholds.items() if k != "max_latency_ratio"}
    notes: list[str] = []
    if not acc_thresholds:
        notes.append(
            "no accuracy threshold is set: layers are ranked, but there is nothing for an exclude list to meet"
            if classification
            else f"no thresholds.metrics limit is set: layers are ranked by {task.primary}, "
            "but there is nothing for an exclude list to meet"
        )

    with tempfile.TemporaryDirectory(prefix="ci-compress-explain-", dir=out_dir) as tmp:
        work = Path(tmp)
        runner = _Runner(loaded, inputs, teacher_m, work, task)

        say("explain: the configured compression")
        full_step, records = runner.step(cfg.passes, (), acc_thresholds, gate_thresholds)
        touched = _layers_touched(inputs.teacher.module, [r.modules for r in records])
        base_bytes = runner.base_bytes()

        layers = []
        for n, (layer, per_pass) in enumerate(touched.items(), 1):
            say(f"explain: layer {n}/{len(touched)}: {layer}")
            restricted = [
                p.model_copy(update={"include": tuple(names), "exclude": ()})
                for p, names in zip(cfg.passes, per_pass, strict=True)
                if names
            ]
            m, file_bytes, _ = runner.measure(restricted)
            worst = runner.worst_class(m)
            layers.append(
                LayerSensitivity(
                    layer=layer,
                    kind=_kind(inputs.teacher.module, layer),
                    passes=tuple(p.type for p in restricted),
                    parameters=_parameters(inputs.teacher.module, layer),
                    accuracy=runner.value(m),
                    drop_points=runner.worsening(m),
                    file_bytes=file_bytes,
                    bytes_saved=base_bytes - file_bytes,
                    worst_class=worst[0] if worst else None,
                    worst_class_drop_points=worst[1] if worst else None,
                )
            )
        layers.sort(key=lambda s: (-s.drop_points, -s.bytes_saved, s.layer))

        steps = [full_step]
        suggested: list[str] | None = [] if acc_thresholds and full_step.accuracy_passed else None
        if suggested is None and acc_thresholds:
            limit = cfg.explain.max_exclude or len(layers)
            for k in range(1, min(limit, len(layers)) + 1):
                excluded = tuple(s.layer for s in layers[:k])
                say(f"explain: full compression excluding {', '.join(excluded)}")
                passes = [
                    p
                    for i, p in enumerate(_with_exclude(cfg.passes, touched, excluded))
                    if not _emptied(touched, i, excluded)  # the gate refuses a no-op pass
                ]
                step, _ = runner.step(passes, excluded, acc_thresholds, gate_thresholds)
                steps.append(step)
                if step.accuracy_passed:
                    suggested = list(excluded)
                    break
        if suggested is None and acc_thresholds:
            notes.append(
                f"no exclude list of the most sensitive layers meets the {runner.quality} thresholds: "
                "make the passes gentler (smaller amount, more bits) or loosen the thresholds"
            )
        suggested_passes: list[dict[str, Any]] = []
        if suggested:
            for i, p in enumerate(_with_exclude(cfg.passes, touched, tuple(suggested))):
                if p.exclude != cfg.passes[i].exclude:
                    change: dict[str, Any] = {
                        "index": i,
                        "type": p.type,
                        "exclude": list(p.exclude),
                    }
                    # every layer the pass touched is excluded: the pass would change
                    # nothing, which the gate refuses; remove it instead
                    if _emptied(touched, i, tuple(suggested)):
                        change["remove"] = True
                    suggested_passes.append(change)
            final = steps[-1]
            if not final.gate_passed:
                notes.append(
                    f"with the suggested exclude list the {runner.quality} thresholds are met but "
                    + "; ".join(final.failures)
                )
    return ExplainResult(
        teacher_accuracy=runner.value(teacher_m),
        teacher_file_bytes=inputs.teacher.file_bytes,
        samples=teacher_m.samples,
        thresholds=thresholds,
        full=full_step,
        layers=layers,
        steps=steps,
        suggested_exclude=suggested,
        suggested_passes=suggested_passes,
        notes=notes,
        metric=None
        if classification
        else {"task": task.type, "name": task.primary, "higher_is_better": task.higher_is_better},
    )


class _Runner:
    """Compress with given passes, ship, reload, evaluate: the pipeline's own functions."""

    def __init__(
        self, loaded: LoadedConfig, inputs: Inputs, teacher_m: TaskMetrics, work: Path, task: Task
    ) -> None:
        self.loaded, self.inputs, self.teacher_m, self.work = loaded, inputs, teacher_m, work
        self.task = task
        self.classification = task.type == "classification"
        self.quality = "accuracy" if self.classification else task.primary
        self.count = 0

    def value(self, m: TaskMetrics) -> float:
        """Top-1 accuracy, or the task's primary metric."""
        return m.accuracy if self.classification else float(m.metrics[self.task.primary])

    def worsening(self, m: TaskMetrics) -> float:
        """Accuracy drop in points, or how much worse the primary metric is (its units)."""
        t, s = self.value(self.teacher_m), self.value(m)
        if self.classification:
            return (t - s) * 100.0
        return t - s if self.task.higher_is_better else s - t

    def measure(self, passes: Sequence[PassConfig]) -> tuple[TaskMetrics, int, list[Any]]:

        cfg = self.loaded.config
        student, records = apply_passes(self.loaded, self.inputs, passes, allow_noop=True)
        self.count += 1
        path = self.work / f"student-{self.count}.ccz"
        shipped, info = ship(
            self.loaded,
            student,
            [r.to_dict() for r in records],
            path,
            holdout=self.inputs.holdout,
        )
        try:
            # measured where the student will serve: ship.runtime (and its own int8), as the gate does
            served = serve(self.loaded, shipped, self.inputs, path)
            file_bytes = served.file_bytes if served else info.file_bytes
            m = score(
                {"student": served.module if served else shipped},
                self.inputs.holdout,
                batch_size=cfg.data.batch_size,
                reference="student",
                task=self.inputs.task,
                output=cfg.model.output,
                device=cfg.runtime.device,
            )["student"]
        finally:
            stem = path.name.removesuffix(".ccz")
            remove_files([path, *artifact_paths(cfg.ship.runtime, path.parent, stem)])
        return m, file_bytes, records

    def base_bytes(self) -> int:
        """The teacher packed with no pass: what 'bytes saved' is measured against."""
        _, file_bytes, _ = self.measure(())
        return file_bytes

    def worst_class(self, m: TaskMetrics) -> tuple[str, float] | None:

        return worst_class(class_drops(self.teacher_m.class_accuracy(), m.class_accuracy()))

    def step(
        self,
        passes: Sequence[PassConfig],
        excluded: tuple[str, ...],
        acc_thresholds: dict[str, float],
        gate_thresholds: dict[str, float],
    ) -> tuple[ExcludeStep, list[Any]]:

        m, file_bytes, records = self.measure(passes)
        flat = {
            "teacher.file_bytes": float(self.inputs.teacher.file_bytes),
            "student.file_bytes": float(file_bytes),
        }
        if self.classification:
            flat = {
                "teacher.accuracy": self.teacher_m.accuracy,
                "student.accuracy": m.accuracy,
                **flat,
            }
        figures = {**flat, **derive(flat)}
        class_delta, notes = class_figures(
            self.teacher_m, m, limit=acc_thresholds.get("max_class_drop")
        )
        figures.update(class_delta)
        rules = None
        if not self.classification:
            # the task's figures, as the gate builds them (delta.<metric>.*)
            for role, r in (("teacher", self.teacher_m), ("student", m)):
                figures.update({f"{role}.{k}": v for k, v in r.metrics.items()})
            figures.update(
                metric_figures(self.teacher_m.metrics, m.metrics, self.task.metric_directions())
            )
            rules = metric_rules(gate_thresholds)
        acc = decide(acc_thresholds, figures, notes=notes, rules=rules) if acc_thresholds else None
        gate = (
            decide(gate_thresholds, figures, notes=notes, rules=rules) if gate_thresholds else None
        )
        return (
            ExcludeStep(
                exclude=excluded,
                accuracy=self.value(m),
                drop_points=self.worsening(m),
                file_bytes=file_bytes,
                figures=figures,
                accuracy_passed=acc.passed if acc else True,
                gate_passed=gate.passed if gate else True,
                failures=tuple(c.message for c in gate.failures) if gate else (),
            ),
            records,
        )


def _layers_touched(teacher: Any, per_pass: list[list[str]]) -> dict[str, list[list[str]]]:
    """Teacher layer -> for each pass, the module names it touched inside that layer."""
    names = {n for n, _ in teacher.named_modules() if n}
    out: dict[str, list[list[str]]] = {}
    for i, modules in enumerate(per_pass):
        for module in modules:
            layer = _teacher_layer(module, names)
            out.setdefault(layer, [[] for _ in per_pass])[i].append(module)
    return out


def _teacher_layer(module: str, names: set[str]) -> str:
    parts = module.split(".")
    for k in range(len(parts), 0, -1):
        if ".".join(parts[:k]) in names:
            return ".".join(parts[:k])
    return module


def _kind(teacher: Any, layer: str) -> str:
    try:
        return type(teacher.get_submodule(layer)).__name__
    except AttributeError:
        return "?"


def _parameters(teacher: Any, layer: str) -> int:
    try:
        return sum(p.numel() for p in teacher.get_submodule(layer).parameters())
    except AttributeError:
        return 0


def _emptied(touched: dict[str, list[list[str]]], index: int, excluded: tuple[str, ...]) -> bool:
    """Whether pass ``index`` touched layers, all of them in ``excluded``: with them
    excluded it would change nothing, so the suggestion removes it."""
    mine = [layer for layer, per in touched.items() if per[index]]
    return bool(mine) and all(layer in excluded for layer in mine)


def _with_exclude(
    passes: Sequence[PassConfig],
    touched: dict[str, list[list[str]]],
    excluded: tuple[str, ...],
) -> list[PassConfig]:
    """The configured passes with ``excluded`` layers added to the exclude list of every
    pass that touched them."""
    out = []
    for i, p in enumerate(passes):
        extra = [layer for layer in excluded if touched.get(layer) and touched[layer][i]]
        extra = [layer for layer in extra if layer not in p.exclude]
        out.append(p.model_copy(update={"exclude": (*p.exclude, *extra)}) if extra else p)
    return out


def write_outputs(result: ExplainResult, out_dir: Path) -> dict[str, Path]:
    """explain.json, explain.md and sensitivity.png in ``out_dir``."""
    data = result.to_dict()
    paths = {
        "explain_json": out_dir / "explain.json",
        "explain_md": out_dir / "explain.md",
        "sensitivity_png": out_dir / "sensitivity.png",
    }
    atomic_write(paths["explain_json"], json.dumps(data, indent=2, sort_keys=True) + "\n")
    atomic_write(paths["explain_md"], markdown_section(data) + "\n")
    write_chart(data, paths["sensitivity_png"])
    return paths


def record(
    loaded: LoadedConfig,
    result: ExplainResult,
    paths: dict[str, Path],
    *,
    environ: Any = None,
    progress: Progress | None = None,
) -> str | None:
    """Record a standalone analysis as its own MLflow run (tag ``ci_compress.kind=explain``).

    Returns the run id, or None when MLflow is disabled in the config. The writes are
    :func:`ci_compress.record.record_explain`'s.
    """
    environ = os.environ if environ is None else environ
    return record_explain(
        make_tracker(loaded, environ, warn_of(progress)),
        experiment=loaded.config.mlflow.experiment,
        ci=detect(environ, loaded.base_dir),
        result=result.to_dict(),
        paths=paths,
    )
