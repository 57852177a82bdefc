"""After the search: the best passing trial, the Pareto front, and the files people read.

The best trial is the one with the smallest objective **among trials whose gate
passed**; a study where nothing passed has no best trial, and no ``tuned.yaml`` is
written for it (Intel Neural Compressor 3.x returns its best model even when the goal
was missed; we do not). Ties go to the earlier trial, so the choice is deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ci_compress.config import dump_yaml
from ci_compress.files import atomic_write, atomic_write_with
from ci_compress.redaction import redact
from ci_compress.tuning.quality import Quality, quality_of

if TYPE_CHECKING:
    import optuna

    from ci_compress.tuning.space import Space
    from ci_compress.tuning.study import Outcome


@dataclass(frozen=True)
class TrialSummary:
    number: int
    state: str  # complete | pruned | skipped (an invalid combination, not run) | failed | running | waiting
    passed: bool
    value: float | None
    passes: list[dict[str, Any]]
    metrics: dict[str, float]
    worker: str = ""
    error: str | None = None
    duplicate_of: int | None = None
    # the searched ship options of the trial (ship.runtime, ship.quantize, ...); empty
    # when none is searched, and for a trial stored before they could be
    ship: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        """Its passes, and its ship options when any were searched."""
        return describe_passes(self.passes, self.ship)

    @property
    def file_bytes(self) -> float | None:
        return self.metrics.get("student.file_bytes")

    @property
    def accuracy(self) -> float | None:
        return self.metrics.get("student.accuracy")

    def quality(self, q: Quality) -> float | None:
        """The student's accuracy, or the task's primary metric."""
        return q.value(self.metrics)


@dataclass
class TuneResult:
    """Everything ``ci-compress tune`` reports; ``passed`` says whether a config was found."""

    study_name: str
    storage: str  # credentials redacted
    objective: str
    budget: int
    trials: list[TrialSummary]
    best: TrialSummary | None
    front: list[TrialSummary]
    ran_here: int
    seconds: float
    profile: str | None = None
    skipped: list[str] = field(default_factory=list)
    thresholds: dict[str, float] = field(default_factory=dict)
    tuned_path: Path | None = None
    report_md: Path | None = None
    plot: Path | None = None
    mlflow: dict[str, str] = field(default_factory=dict)
    # what trials are compared on: accuracy, or the task's primary metric
    quality: Quality = field(default_factory=Quality)

    @property
    def passed(self) -> bool:
        return self.best is not None

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.trials:
            out[t.state] = out.get(t.state, 0) + 1
        out["passed"] = sum(t.passed for t in self.trials)
        return out


def summarize(study: optuna.Study) -> list[TrialSummary]:
    out = []
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("over_budget"):
            continue
        state = t.state.name.lower().replace("fail", "failed")
        if t.user_attrs.get("invalid"):
            state = "skipped"
        out.append(
            TrialSummary(
                number=t.number,
                state=state,
                passed=bool(t.user_attrs.get("passed")) and state == "complete",
                value=t.value if state == "complete" else None,
                passes=list(t.user_attrs.get("passes", [])),
                metrics=dict(t.user_attrs.get("metrics", {})),
                worker=str(t.user_attrs.get("worker", "")),
                error=t.user_attrs.get("error"),
                duplicate_of=t.user_attrs.get("duplicate_of"),
                ship=dict(t.user_attrs.get("ship", {})),
            )
        )
    return out


def pick_best(trials: Sequence[TrialSummary]) -> TrialSummary | None:
    ok = [t for t in trials if t.passed and t.value is not None and math.isfinite(t.value)]
    return min(ok, key=lambda t: (t.value, t.number)) if ok else None


def pareto_front(trials: Sequence[TrialSummary], q: Quality | None = None) -> list[TrialSummary]:
    """Trials no other trial beats on both shipped bytes (fewer) and accuracy (higher),
    or the task's primary metric (in its direction)."""
    q = q or Quality()
    pts = [t for t in trials if t.file_bytes is not None and t.quality(q) is not None]
    front = []
    for t in pts:
        v = t.quality(q)
        dominated = any(
            o.file_bytes <= t.file_bytes  # type: ignore[operator]
            and not q.better(v, o.quality(q))  # type: ignore[arg-type]
            and (o.file_bytes < t.file_bytes or q.better(o.quality(q), v))  # type: ignore[operator, arg-type]
            for o in pts
        )
        if not dominated:
            front.append(t)
    return sorted(front, key=lambda t: (t.file_bytes, t.number))


def describe_passes(
    passes: Sequence[Mapping[str, Any]], ship: Mapping[str, Any] | None = None
) -> str:
    tail = ""
    if ship:
        tail = "; ship(" + ", ".join(f"{k}={_short(v)}" for k, v in ship.items()) + ")"
    if not passes:
        return "no passes" + tail
    parts = []
    for p in passes:
        opts = ", ".join(
            f"{k}={_short(v)}"
            for k, v in p.items()
            if k != "type" and k not in ("include", "exclude")
        )
        parts.append(f"{p['type']}({opts})")
    return " → ".join(parts) + tail


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


# ---------------------------------------------------------------- files


def write_tuned(
    space: Space,
    best: TrialSummary,
    path: Path,
    *,
    study: str,
    storage: str,
    quality: Quality | None = None,
) -> Path:
    """Write the best passing trial as a config ``ci-compress run`` and ``validate`` accept.

    Values the config took from the environment are written as their ``${NAME}``
    references, as in the config the study started from.
    """
    mapping = space.config_mapping(best.passes, best.ship)
    space.build(best.passes, best.ship)  # validated exactly as it will be read
    m = best.metrics
    header = (
        f"# Written by `ci-compress tune` (study {study!r}, trial {best.number}): the most compressed\n"
        f"# student that passed the gate. Shipped {int(m['student.file_bytes']):,} bytes "
        f"({m.get('delta.compression_ratio', 0):.2f}x smaller), {(quality or Quality()).describe(m)}.\n"
        f"# Storage: {storage}\n"
    )
    atomic_write(path, header + dump_yaml(mapping))
    return path


def plot_pareto(result: TuneResult, path: Path) -> Path:
    """Accuracy against shipped bytes for every measured trial, the front, the best."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    q = result.quality
    if not q.classification:
        return _plot_metric(result, path, q)
    pts = [t for t in result.trials if t.file_bytes is not None and t.accuracy is not None]
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=110)
    groups = [
        ("passed the gate", [t for t in pts if t.passed], "tab:green", "o"),
        (
            "failed the gate",
            [t for t in pts if not t.passed and t.state == "complete"],
            "tab:red",
            "x",
        ),
        ("pruned (failed early)", [t for t in pts if t.state == "pruned"], "tab:gray", "v"),
    ]
    for label, ts, color, marker in groups:
        if ts:
            ax.scatter(
                [float(t.file_bytes or 0) for t in ts],
                [100 * t.accuracy for t in ts],  # type: ignore[operator]
                c=color,
                marker=marker,
                s=36,
                label=f"{label} ({len(ts)})",
                zorder=3,
            )
    if result.front:
        ax.step(
            [float(t.file_bytes or 0) for t in result.front],
            [100 * t.accuracy for t in result.front],  # type: ignore[operator]
            where="post",
            color="tab:blue",
            lw=1.2,
            label="Pareto front (bytes vs accuracy)",
            zorder=2,
        )
    teacher = next((t.metrics for t in pts if "teacher.accuracy" in t.metrics), None)
    if teacher is not None:
        t_acc = 100 * teacher["teacher.accuracy"]
        ax.axhline(t_acc, color="black", lw=0.8, ls=":", label=f"teacher {t_acc:.2f}%")
        drop = result.thresholds.get("max_accuracy_drop")
        if drop is not None:
            ax.axhline(
                t_acc - drop,
                color="tab:red",
                lw=0.8,
                ls="--",
                label=f"gate: drop ≤ {drop:g} points",
            )
    if result.best is not None:
        b = result.best
        ax.scatter(
            [float(b.file_bytes or 0)],
            [100 * b.accuracy],  # type: ignore[operator]
            s=260,
            marker="*",
            c="gold",
            edgecolors="black",
            zorder=4,
            label=f"best: trial {b.number}, {int(b.file_bytes):,} B",  # type: ignore[arg-type]
        )
    # Zoom on the region that matters (around the gate's limit); say what falls below.
    accs = [100 * t.accuracy for t in pts]  # type: ignore[operator]
    if accs and teacher is not None:
        limit = 100 * teacher["teacher.accuracy"] - result.thresholds.get("max_accuracy_drop", 5.0)
        floor = min([limit - 4.0, *[100 * t.accuracy for t in pts if t.passed]])  # type: ignore[operator]
        below = sum(a < floor for a in accs)
        if below:
            ax.set_ylim(bottom=floor, top=max(accs) + 0.5)
            ax.text(
                0.01,
                0.02,
                f"{below} trial(s) below {floor:.1f}% not shown",
                transform=ax.transAxes,
                fontsize=8,
                color="dimgray",
            )
    ax.set_xscale("log")
    ax.set_xlabel("shipped student file (bytes, log scale)")
    ax.set_ylabel("top-1 accuracy on holdout (%)")
    ax.set_title(f"ci-compress tune: study {result.study_name!r}, {len(pts)} measured trials")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    atomic_write_with(path, lambda f: fig.savefig(f, format="png"))
    plt.close(fig)
    return path


def _plot_metric(result: TuneResult, path: Path, q: Quality) -> Path:
    """The task's primary metric against shipped bytes (a task other than classification)."""
    import matplotlib.pyplot as plt

    pts = [t for t in result.trials if t.file_bytes is not None and t.quality(q) is not None]
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=110)
    for label, ts, color, marker in (
        ("passed the gate", [t for t in pts if t.passed], "tab:green", "o"),
        (
            "failed the gate",
            [t for t in pts if not t.passed and t.state == "complete"],
            "tab:red",
            "x",
        ),
        ("pruned (failed early)", [t for t in pts if t.state == "pruned"], "tab:gray", "v"),
    ):
        if ts:
            ax.scatter(
                [float(t.file_bytes or 0) for t in ts],
                [t.quality(q) or 0.0 for t in ts],
                c=color,
                marker=marker,
                s=36,
                label=f"{label} ({len(ts)})",
                zorder=3,
            )
    if result.front:
        ax.step(
            [float(t.file_bytes or 0) for t in result.front],
            [t.quality(q) or 0.0 for t in result.front],
            where="post",
            color="tab:blue",
            lw=1.2,
            label=f"Pareto front (bytes vs {q.metric})",
            zorder=2,
        )
    teacher = next((q.value(t.metrics, "teacher") for t in pts), None)
    if teacher is not None:
        ax.axhline(teacher, color="black", lw=0.8, ls=":", label=f"teacher {q.fmt(teacher)}")
    if result.best is not None:
        b = result.best
        ax.scatter(
            [float(b.file_bytes or 0)],
            [b.quality(q) or 0.0],
            s=260,
            marker="*",
            c="gold",
            edgecolors="black",
            zorder=4,
            label=f"best: trial {b.number}, {int(b.file_bytes or 0):,} B",
        )
    ax.set_xscale("log")
    ax.set_xlabel("shipped student file (bytes, log scale)")
    ax.set_ylabel(
        f"{q.metric} on holdout ({'higher' if q.higher_is_better else 'lower'} is better)"
    )
    ax.set_title(f"ci-compress tune: study {result.study_name!r}, {len(pts)} measured trials")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write_with(path, lambda f: fig.savefig(f, format="png"))
    plt.close(fig)
    return path


def render_markdown(result: TuneResult) -> str:
    q = result.quality
    c = result.counts()
    lines = [f"# ci-compress tune: study `{result.study_name}`", ""]
    if result.best is None:
        lines += [
            "**No trial passed the gate.** No `tuned.yaml` was written: widen the space, "
            "raise the budget, or relax the thresholds.",
            "",
        ]
    else:
        b = result.best
        m = b.metrics
        lines += [
            f"**Best passing config: trial {b.number}**: {b.describe()}",
            "",
            "| | teacher | best student |",
            "|---|---:|---:|",
            f"| shipped file (bytes) | {int(m['teacher.file_bytes']):,} | {int(m['student.file_bytes']):,} |",
            *(
                [
                    f"| top-1 accuracy | {100 * m['teacher.accuracy']:.2f}% | {100 * m['student.accuracy']:.2f}% |",
                    f"| compression ratio | | {m.get('delta.compression_ratio', 0):.2f}x |",
                    f"| accuracy drop (points) | | {m.get('delta.accuracy_drop_points', 0):.2f} |",
                ]
                if q.classification
                else [
                    f"| {q.metric} | {q.fmt(m[f'teacher.{q.metric}'])} | {q.fmt(m[f'student.{q.metric}'])} |",
                    f"| compression ratio | | {m.get('delta.compression_ratio', 0):.2f}x |",
                    f"| {q.metric} {q.change} | | {m.get(f'delta.{q.metric}.{q.change}', 0):.4g} |",
                ]
            ),
        ]
        if "student.latency_ms" in m:
            lines.append(
                f"| latency, median (ms) | {m['teacher.latency_ms']:.3f} | {m['student.latency_ms']:.3f} |"
            )
        lines.append("")
        if result.tuned_path is not None:
            lines += [
                f"Ready to commit: `{result.tuned_path.name}` (`ci-compress run --config {result.tuned_path.name}`).",
                "",
            ]
    lines += [
        f"Trials: {len(result.trials)} in the study (budget {result.budget}; {result.ran_here} run by this process), "
        f"{c.get('passed', 0)} passed, {c.get('complete', 0)} completed, {c.get('pruned', 0)} pruned early, "
        f"{c.get('failed', 0)} failed"
        + (
            f", {c['skipped']} skipped as invalid combinations (not run, not counted in the budget)"
            if c.get("skipped")
            else ""
        )
        + f". Objective: {result.objective}. "
        f"Storage: `{result.storage}`.",
        "",
    ]
    if result.thresholds:
        lines += [
            "Constraints (the gate's thresholds): "
            + ", ".join(f"`{k}` {v:g}" for k, v in sorted(result.thresholds.items())),
            "",
        ]
    if result.profile:
        lines.append(f"Profile: `{result.profile}`.")
        if result.skipped:
            lines.append("Left out of the profile (not available in this ci-compress):")
            lines += [f"- {s}" for s in result.skipped]
        lines.append("")
    if result.plot is not None:
        title = "Accuracy" if q.classification else q.metric
        lines += [f"## {title} versus size", "", f"![Pareto front]({result.plot.name})", ""]
    lines += [
        "## Pareto front",
        "",
        f"| trial | passes | bytes | {q.metric} | gate |",
        "|---:|---|---:|---:|---|",
    ]
    for t in result.front:
        gate = "pass" if t.passed else ("pruned" if t.state == "pruned" else "fail")
        lines.append(
            f"| {t.number} | {t.describe()} | {int(t.file_bytes or 0):,} | "
            f"{q.fmt(t.quality(q) or 0)} | {gate} |"
        )
    lines += [
        "",
        "## All trials",
        "",
        f"| trial | state | passes | bytes | {q.metric} | gate | worker |",
        "|---:|---|---|---:|---:|---|---|",
    ]
    for t in result.trials:
        gate = "pass" if t.passed else ("-" if t.file_bytes is None else "fail")
        state = t.state + (f" (as trial {t.duplicate_of})" if t.duplicate_of is not None else "")
        lines.append(
            f"| {t.number} | {state} | {t.describe()} | "
            f"{'-' if t.file_bytes is None else f'{int(t.file_bytes):,}'} | "
            f"{'-' if t.quality(q) is None else q.fmt(t.quality(q) or 0)} | {gate}"
            f"{' (' + t.error + ')' if t.error else ''} | {t.worker} |"
        )
    if result.mlflow.get("parent_run_id"):
        where = result.mlflow.get("run_url") or result.mlflow["parent_run_id"]
        lines += ["", f"MLflow: parent run {where}; one nested run per trial."]
    return "\n".join(lines) + "\n"


def finish(outcome: Outcome, *, write_output: bool = True) -> TuneResult:
    """Summarise the study; write pareto.png, tune-report.md and (if one passed) tuned.yaml."""

    s = outcome.settings
    trials = summarize(outcome.study)
    q = quality_of(s.loaded)
    result = TuneResult(
        study_name=s.study_name,
        storage=redact(s.storage_url),
        objective=outcome.space.objective,
        budget=s.max_trials,
        trials=trials,
        best=pick_best(trials),
        front=pareto_front(trials, q),
        ran_here=outcome.ran_here,
        seconds=outcome.seconds,
        profile=outcome.space.profile,
        skipped=list(outcome.space.skipped),
        thresholds=s.loaded.config.thresholds.active(),
        quality=q,
    )
    s.out_dir.mkdir(parents=True, exist_ok=True)
    result.plot = plot_pareto(result, s.out_dir / "pareto.png")
    if result.best is not None and write_output:
        result.tuned_path = write_tuned(
            outcome.space,
            result.best,
            s.loaded.resolve(s.tune.output),
            study=s.study_name,
            storage=result.storage,
            quality=q,
        )
    result.report_md = s.out_dir / "tune-report.md"
    atomic_write(result.report_md, render_markdown(result))
    return result
