"""The gate: thresholds + measurements -> decision with one reason per threshold.

Pure: no I/O, no torch, no MLflow. A failed gate is a result, not an exception.

Measurements are flat names: ``teacher.accuracy``, ``student.accuracy`` (fractions),
``teacher.file_bytes``, ``student.file_bytes``, ``teacher.latency_ms``,
``student.latency_ms``. :func:`derive` computes the ``delta.*`` figures the thresholds
compare, so the report and the decision use the very same numbers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from ci_compress.errors import ExitCode


@dataclass(frozen=True)
class Check:
    threshold: str  # config name, e.g. max_accuracy_drop
    metric: str  # measured figure, e.g. delta.accuracy_drop_points
    limit: float
    measured: float
    passed: bool
    message: str
    # The interval the confident rule used (None under the point rule or for figures
    # without one) and the outcome: pass | fail | inconclusive.
    ci_low: float | None = None
    ci_high: float | None = None
    outcome: str = ""
    skipped: bool = False  # a baseline check with no baseline to compare (counts as passed)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if self.skipped:
            out["measured"] = None  # nothing was measured; NaN is not JSON
        return out


@dataclass(frozen=True)
class Tightened:
    """A threshold a PR's config set looser than the policy (or dropped): the gate used
    the policy's value instead."""

    threshold: str
    config: float | None  # what the PR's config says (None: it does not set it)
    policy: float  # what the policy recorded on the registry says
    used: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GateResult:
    """The decision. ``passed`` means "does not block the merge"; ``verdict`` says why.

    ``verdict`` is ``fail`` when any check fails, else ``inconclusive`` when any check
    could not be decided with the holdout given (confident rule only), else ``pass``.
    An inconclusive gate blocks unless the ``inconclusive`` policy is ``pass``/``warn``.
    """

    passed: bool
    checks: tuple[Check, ...]
    verdict: str = ""  # pass | fail | inconclusive ("" = derived from passed)
    decision: str = "point"
    inconclusive_policy: str = "fail"
    # Where the policy a PR build is held to came from (None: no policy applied), and
    # each threshold the PR's config tried to loosen.
    policy_source: str | None = None
    tightened: tuple[Tightened, ...] = ()

    @property
    def failures(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.outcome == "fail" or not (c.passed or c.outcome))

    @property
    def undecided(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.outcome == "inconclusive")

    @property
    def exit_code(self) -> int:
        """0 pass (or a tolerated inconclusive), 1 failed, 5 inconclusive and blocking."""

        verdict = self.verdict or ("pass" if self.passed else "fail")
        if verdict == "fail":
            return int(ExitCode.GATE_FAILED)
        if verdict == "inconclusive" and not self.passed:
            return int(ExitCode.INCONCLUSIVE)
        return int(ExitCode.PASSED)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "passed": self.passed,
            "verdict": self.verdict or ("pass" if self.passed else "fail"),
            "decision": self.decision,
            "inconclusive_policy": self.inconclusive_policy,
            "checks": [c.to_dict() for c in self.checks],
        }
        if self.policy_source is not None:
            out["policy"] = {
                "source": self.policy_source,
                "loosened": [t.to_dict() for t in self.tightened],
            }
        return out


def derive(m: Mapping[str, float]) -> dict[str, float]:
    """delta.* figures from teacher.* and student.* measurements.

    The accuracy figures need ``teacher.accuracy`` and ``student.accuracy``
    (classification); a task without them gets the size, latency and parameter figures,
    and its own metrics' figures from :func:`metric_figures`.
    """
    out = {"delta.compression_ratio": m["teacher.file_bytes"] / m["student.file_bytes"]}
    if "teacher.accuracy" in m and "student.accuracy" in m:
        t_acc, s_acc = m["teacher.accuracy"], m["student.accuracy"]
        out["delta.accuracy_drop_points"] = (t_acc - s_acc) * 100.0
        out["delta.relative_accuracy_drop"] = (t_acc - s_acc) / t_acc if t_acc > 0 else 0.0
        out["delta.accuracy_recovery"] = s_acc / t_acc if t_acc > 0 else 1.0
    if m.get("teacher.latency_ms"):
        out["delta.latency_ratio"] = m["student.latency_ms"] / m["teacher.latency_ms"]
    if m.get("teacher.parameters"):
        out["delta.parameter_ratio"] = m["student.parameters"] / m["teacher.parameters"]
    if "champion.accuracy" in m and "student.accuracy" in m:
        out["delta.accuracy_drop_vs_champion_points"] = (
            m["champion.accuracy"] - m["student.accuracy"]
        ) * 100.0
    if m.get("champion.file_bytes"):
        out["delta.size_ratio_vs_champion"] = m["student.file_bytes"] / m["champion.file_bytes"]
    return out


# threshold -> (metric, direction, unit) ; direction "max": measured <= limit passes
RULES: dict[str, tuple[str, str, str]] = {
    "max_accuracy_drop": ("delta.accuracy_drop_points", "max", " points"),
    "max_relative_accuracy_drop": ("delta.relative_accuracy_drop", "max", ""),
    "min_compression_ratio": ("delta.compression_ratio", "min", "x"),
    "max_size_bytes": ("student.file_bytes", "max", " bytes"),
    "max_latency_ratio": ("delta.latency_ratio", "max", "x"),
    "max_accuracy_drop_vs_champion": ("delta.accuracy_drop_vs_champion_points", "max", " points"),
    "max_size_ratio_vs_champion": ("delta.size_ratio_vs_champion", "max", "x"),
    "min_recovery": ("delta.accuracy_recovery", "min", ""),
    "max_class_drop": ("delta.max_class_drop_points", "max", " points"),
}
# thresholds.metrics.<metric>.<limit> -> (figure under delta.<metric>., direction)
METRIC_LIMITS: dict[str, tuple[str, str]] = {
    "max_drop": ("drop", "max"),
    "max_relative_drop": ("relative_drop", "max"),
    "min_recovery": ("recovery", "min"),
    "max_increase": ("increase", "max"),
    "max_relative_increase": ("relative_increase", "max"),
    "min_value": ("value", "min"),
    "max_value": ("value", "max"),
}


def metric_figures(
    teacher: Mapping[str, float],
    student: Mapping[str, float],
    directions: Mapping[str, bool] | None = None,
) -> dict[str, float]:
    """``delta.<metric>.*`` for every metric both models report (a task's metrics by name).

    ``drop`` = teacher - student, ``increase`` = student - teacher, the relative forms
    divided by the teacher's value (0 when it is 0), ``recovery`` = student / teacher
    (1 when the teacher's value is 0), ``value`` = the student's own value.

    ``directions`` (metric -> higher is better) keeps the figures that fit each metric:
    ``drop``, ``relative_drop``, ``recovery`` for higher-is-better metrics,
    ``increase``, ``relative_increase`` for lower-is-better ones, ``value`` for both;
    metrics it does not name are left out.
    """
    out: dict[str, float] = {}
    names = set(teacher) & set(student)
    if directions is not None:
        names &= set(directions)
    for name in sorted(names):
        t, s = float(teacher[name]), float(student[name])
        base = f"delta.{name}."
        higher = None if directions is None else directions[name]
        if higher is not False:  # higher is better, or either
            out[base + "drop"] = t - s
            out[base + "relative_drop"] = (t - s) / abs(t) if t else 0.0
            out[base + "recovery"] = s / t if t else 1.0
        if higher is not True:  # lower is better, or either
            out[base + "increase"] = s - t
            out[base + "relative_increase"] = (s - t) / abs(t) if t else 0.0
        out[base + "value"] = s
    return out


def metric_interval(name: str) -> tuple[str, str] | None:
    """The interval figures of a ``metrics.<metric>.max_<drop|increase>`` or
    ``max_relative_<drop|increase>`` threshold (present for the task's primary metric,
    whose per-sample scores are paired: :meth:`PairedScoreStatistics.deltas
    <ci_compress.evaluation.statistics.PairedScoreStatistics.deltas>`)."""
    head, _, rest = name.partition(".")
    metric, _, limit = rest.rpartition(".")
    if head != "metrics" or not metric or limit not in _INTERVAL_LIMITS:
        return None
    figure = METRIC_LIMITS[limit][0]
    return f"delta.{metric}.{figure}_ci_low", f"delta.{metric}.{figure}_ci_high"


_INTERVAL_LIMITS = frozenset(
    {"max_drop", "max_relative_drop", "max_increase", "max_relative_increase"}
)


def metric_rules(thresholds: Mapping[str, float]) -> dict[str, tuple[str, str, str]]:
    """The rules of ``metrics.<metric>.<limit>`` threshold names (``Thresholds.active()``
    flattens ``thresholds.metrics`` that way), for :func:`decide`'s ``rules``."""
    rules: dict[str, tuple[str, str, str]] = {}
    for name in thresholds:
        head, _, rest = name.partition(".")
        metric, _, limit = rest.rpartition(".")
        if head == "metrics" and metric and limit in METRIC_LIMITS:
            figure, direction = METRIC_LIMITS[limit]
            rules[name] = (f"delta.{metric}.{figure}", direction, "")
    return rules


# Thresholds against the current champion: skipped (not failed) when there is none yet.
BASELINE_THRESHOLDS = frozenset(k for k in RULES if k.endswith("_vs_champion"))


# threshold -> (lower, upper) bound measurements of its figure's confidence interval
INTERVALS: dict[str, tuple[str, str]] = {
    "max_accuracy_drop": ("delta.accuracy_drop_ci_low", "delta.accuracy_drop_ci_high"),
    "max_relative_accuracy_drop": (
        "delta.relative_accuracy_drop_ci_low",
        "delta.relative_accuracy_drop_ci_high",
    ),
    # the order-statistic interval of the median paired latency ratio
    # (ci_compress.evaluation.performance.latency_ratio)
    "max_latency_ratio": ("delta.latency_ratio_ci_low", "delta.latency_ratio_ci_high"),
}
DECISIONS = ("point", "confident")
INCONCLUSIVE_POLICIES = ("fail", "pass", "warn")

# Thresholds about task quality (the ones a per-layer exclude list can fix).
ACCURACY_THRESHOLDS = frozenset(
    {"max_accuracy_drop", "max_relative_accuracy_drop", "min_recovery", "max_class_drop"}
)


def _fmt(v: float, unit: str) -> str:
    if unit == " bytes":
        return f"{int(v):,}{unit}"
    return f"{v:.4g}{unit}"


def decide(
    thresholds: Mapping[str, float],
    measurements: Mapping[str, float],
    *,
    decision: str = "point",
    confidence: float = 0.95,
    inconclusive: str = "fail",
    notes: Mapping[str, str] | None = None,
    rules: Mapping[str, tuple[str, str, str]] | None = None,
) -> GateResult:
    """Check every set threshold; the gate passes when all checks pass.

    ``decision="point"`` compares the measured figure with the limit. ``"confident"``
    does so for figures without an interval (size, compression ratio, a task metric
    other than the primary one) and, for the thresholds with one (``INTERVALS``: the
    accuracy drops and the latency ratio; :func:`metric_interval`: the ``max_*`` limits
    of ``thresholds.metrics`` on the task's primary metric), uses the interval: the
    check fails only when the whole interval is above the limit (the figure exceeds it
    with the given confidence), passes when the whole interval is at or below it, and
    is inconclusive when the interval straddles the limit. A latency ratio or a task
    metric measured without its interval (no timed repeats, no paired scores) is
    compared as a point.

    ``rules`` adds thresholds beyond :data:`RULES` (name -> figure, direction, unit):
    :func:`metric_rules` gives those of a task's metrics, whose figures come from
    :func:`metric_figures`.
    """
    if decision not in DECISIONS:
        raise ValueError(f"unknown decision rule {decision!r}")
    if inconclusive not in INCONCLUSIVE_POLICIES:
        raise ValueError(f"unknown inconclusive policy {inconclusive!r}")
    notes = notes or {}
    figures = {**measurements}
    if "delta.accuracy_drop_points" not in figures and "teacher.accuracy" in figures:
        figures.update(derive(measurements))
    known = {**RULES, **(rules or {})}
    checks = []
    for name in sorted(thresholds):
        if name not in known:
            raise KeyError(f"unknown threshold {name!r}")
        metric, direction, unit = known[name]
        limit = float(thresholds[name])
        if metric not in figures and name in BASELINE_THRESHOLDS:
            checks.append(
                Check(
                    threshold=name,
                    metric=metric,
                    limit=limit,
                    measured=float("nan"),
                    passed=True,
                    message=f"{name}: skipped, no champion to compare against yet",
                    skipped=True,
                )
            )
            continue
        if metric not in figures:
            raise KeyError(f"threshold {name} needs measurement {metric!r}")
        measured = float(figures[metric])
        word = "at most" if direction == "max" else "at least"
        note = f" ({notes[metric]})" if notes.get(metric) else ""
        ci_low = ci_high = None
        bounds = INTERVALS.get(name) or metric_interval(name)
        if bounds is not None and all(k in figures for k in bounds):
            ci_low, ci_high = (float(figures[k]) for k in bounds)
        elif bounds is not None and decision == "confident" and name in ACCURACY_THRESHOLDS:
            raise KeyError(f"the confident rule needs measurements {bounds}")
        if decision == "confident" and ci_low is not None and ci_high is not None:
            # direction is "max" for every threshold with an interval
            if ci_low > limit:
                outcome = "fail"
            elif ci_high <= limit:
                outcome = "pass"
            else:
                outcome = "inconclusive"
            pct = f"{confidence * 100:g}%"
            verdict_word = {"pass": "ok", "fail": "FAILED", "inconclusive": "INCONCLUSIVE"}[outcome]
            message = (
                f"{name}: {metric} = {_fmt(measured, unit)}{note}, {pct} interval "
                f"[{_fmt(ci_low, unit)}, {_fmt(ci_high, unit)}], must be {word} "
                f"{_fmt(limit, unit)} with {pct} confidence ({verdict_word})"
            )
        else:
            ok = measured <= limit if direction == "max" else measured >= limit
            outcome = "pass" if ok else "fail"
            interval = (
                f" (interval [{_fmt(ci_low, unit)}, {_fmt(ci_high, unit)}])"
                if ci_low is not None and ci_high is not None
                else ""
            )
            message = (
                f"{name}: {metric} = {_fmt(measured, unit)}{note}{interval}, must be {word} "
                f"{_fmt(limit, unit)} ({'ok' if ok else 'FAILED'})"
            )
        checks.append(
            Check(
                threshold=name,
                metric=metric,
                limit=limit,
                measured=measured,
                passed=outcome == "pass",
                message=message,
                ci_low=ci_low,
                ci_high=ci_high,
                outcome=outcome,
            )
        )
    outcomes = {c.outcome for c in checks}
    verdict = (
        "fail" if "fail" in outcomes else "inconclusive" if "inconclusive" in outcomes else "pass"
    )
    passed = verdict == "pass" or (verdict == "inconclusive" and inconclusive in ("pass", "warn"))
    return GateResult(
        passed=passed,
        checks=tuple(checks),
        verdict=verdict,
        decision=decision,
        inconclusive_policy=inconclusive,
    )


def direction(threshold: str) -> str | None:
    """``max`` (lower is stricter), ``min`` (higher is stricter) or None (unknown name)."""
    if threshold in RULES:
        return RULES[threshold][1]
    head, _, rest = threshold.partition(".")
    limit = rest.rpartition(".")[2]
    if head == "metrics" and limit in METRIC_LIMITS:
        return METRIC_LIMITS[limit][1]
    return None


def stricter(
    config: Mapping[str, float], policy: Mapping[str, float]
) -> tuple[dict[str, float], tuple[Tightened, ...]]:
    """Per threshold, the stricter of a PR's ``config`` and the ``policy``.

    A threshold only the config sets is kept (a PR may add checks); one only the policy
    sets is added (a PR may not drop one); one both set takes the stricter value (the
    lower ``max_*``, the higher ``min_*``). Returns the thresholds to gate on and each
    one the config tried to loosen. Policy names this version does not know are
    ignored (a newer ci-compress recorded them).
    """
    used = dict(config)
    tightened = []
    for name in sorted(policy):
        way = direction(name)
        if way is None:
            continue
        limit = float(policy[name])
        mine = config.get(name)
        looser = mine is not None and (float(mine) > limit if way == "max" else float(mine) < limit)
        if mine is not None and not looser:
            continue
        used[name] = limit
        tightened.append(
            Tightened(
                threshold=name,
                config=None if mine is None else float(mine),
                policy=limit,
                used=limit,
            )
        )
    return used, tuple(tightened)
