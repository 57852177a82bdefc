"""How sure is the change? Paired statistics over per-sample scores.

Teacher and student are evaluated on the same holdout samples, so every sample falls
into one of four cells: both right (``n11``), only the teacher right (``n10``), only
the student right (``n01``), both wrong (``n00``). The accuracy drop in points is
``100 * (n10 - n01) / n``; only the *discordant* samples (``n10``, ``n01``) move it.

Two figures are computed, both deterministic:

* a **paired bootstrap** interval for the drop (points) and the relative drop: the
  holdout is resampled with replacement ``resamples`` times with a fixed seed; since a
  resample of paired samples is a multinomial draw over the four cells, each resample
  is one ``Generator.multinomial`` call (exact, fast, identical for the same seed).
  The interval is the two-sided percentile interval at ``confidence``.
* an **exact McNemar test** of "teacher and student are equally accurate": the
  two-sided binomial test of ``n10`` successes in ``n10 + n01`` trials at p = 0.5,
  computed in log space with :mod:`math` (no scipy needed).

Known limit of the bootstrap: with no discordant samples at all, every resample gives
a drop of exactly 0 and the interval collapses to [0, 0], however small the holdout.
The McNemar p-value (1.0) and the discordant counts are reported beside it so a reader
can see that case.

Tasks whose per-sample score is continuous (absolute error, cosine similarity, mean
NLL; see :mod:`ci_compress.evaluation.tasks`) use :func:`paired_score_statistics`
instead: a paired bootstrap of the mean change (resampled in chunks, so memory stays
bounded) and a paired t-test (scipy, already installed with scikit-learn).
:func:`is_binary` says which applies: 0/1 scores keep the exact McNemar path above.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class PairedStatistics:
    samples: int
    both_correct: int  # n11
    teacher_only: int  # n10: the teacher right, the student wrong
    student_only: int  # n01: the student right, the teacher wrong
    both_wrong: int  # n00
    drop_points: float
    drop_ci_low: float  # points
    drop_ci_high: float  # points
    relative_drop: float
    relative_ci_low: float
    relative_ci_high: float
    mcnemar_p_value: float
    confidence: float
    resamples: int
    seed: int
    method: str = "paired bootstrap (percentile), exact McNemar"

    def deltas(self) -> dict[str, float]:
        """The figures as flat ``delta.*`` measurements (report, MLflow, gate)."""
        return {
            "delta.accuracy_drop_ci_low": self.drop_ci_low,
            "delta.accuracy_drop_ci_high": self.drop_ci_high,
            "delta.relative_accuracy_drop_ci_low": self.relative_ci_low,
            "delta.relative_accuracy_drop_ci_high": self.relative_ci_high,
            "delta.mcnemar_p_value": self.mcnemar_p_value,
            "delta.discordant_teacher_only": float(self.teacher_only),
            "delta.discordant_student_only": float(self.student_only),
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PairedStatistics:
        """The inverse of :meth:`to_dict` (the report's ``statistics`` section)."""
        return cls(
            samples=int(data["samples"]),
            both_correct=int(data["both_correct"]),
            teacher_only=int(data["teacher_only"]),
            student_only=int(data["student_only"]),
            both_wrong=int(data["both_wrong"]),
            drop_points=float(data["drop_points"]),
            drop_ci_low=float(data["drop_ci_low"]),
            drop_ci_high=float(data["drop_ci_high"]),
            relative_drop=float(data["relative_drop"]),
            relative_ci_low=float(data["relative_ci_low"]),
            relative_ci_high=float(data["relative_ci_high"]),
            mcnemar_p_value=float(data["mcnemar_p_value"]),
            confidence=float(data["confidence"]),
            resamples=int(data["resamples"]),
            seed=int(data["seed"]),
            method=str(data.get("method", cls.method)),
        )


def cells(teacher_correct: np.ndarray, student_correct: np.ndarray) -> tuple[int, int, int, int]:
    """(n11, n10, n01, n00) from two boolean per-sample masks of equal length."""
    import numpy as np

    t = np.asarray(teacher_correct, dtype=bool)
    s = np.asarray(student_correct, dtype=bool)
    if t.shape != s.shape or t.ndim != 1:
        raise ValueError(
            f"paired masks must be 1-D and equal in length, got {t.shape} and {s.shape}"
        )
    return (
        int((t & s).sum()),
        int((t & ~s).sum()),
        int((~t & s).sum()),
        int((~t & ~s).sum()),
    )


def mcnemar_exact(teacher_only: int, student_only: int) -> float:
    """Two-sided exact McNemar p-value: binomial test of b in b + c trials at p = 1/2."""
    n = teacher_only + student_only
    if n == 0:
        return 1.0
    k = min(teacher_only, student_only)
    # P(X <= k) for X ~ Binomial(n, 1/2), summed in log space (n may be thousands).
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) for i in range(k + 1)]
    top = max(logs)
    tail = math.exp(top + math.log(sum(math.exp(v - top) for v in logs)) - n * math.log(2))
    return min(1.0, 2.0 * tail)


def paired_statistics(
    teacher_correct: np.ndarray,
    student_correct: np.ndarray,
    *,
    confidence: float = 0.95,
    resamples: int = 10_000,
    seed: int = 0,
) -> PairedStatistics:
    """Interval and test for the accuracy drop of a student against its teacher."""
    import numpy as np

    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    n11, n10, n01, n00 = cells(teacher_correct, student_correct)
    n = n11 + n10 + n01 + n00
    if n == 0:
        raise ValueError("no paired samples")
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(n, [n11 / n, n10 / n, n01 / n, n00 / n], size=resamples)
    b, c = draws[:, 1].astype(np.float64), draws[:, 2].astype(np.float64)
    drop = 100.0 * (b - c) / n
    teacher_acc = draws[:, 0] + draws[:, 1]
    relative = np.divide(b - c, teacher_acc, out=np.zeros_like(b), where=teacher_acc > 0)
    alpha = (1.0 - confidence) / 2.0
    lo_q, hi_q = alpha, 1.0 - alpha
    t_correct = n11 + n10

    def q(values: np.ndarray, p: float) -> float:
        # "lower"/"higher" keep the bounds on values a resample can take (no interpolation).
        method = "lower" if p < 0.5 else "higher"
        return float(np.quantile(values, p, method=method))  # type: ignore[call-overload]

    return PairedStatistics(
        samples=n,
        both_correct=n11,
        teacher_only=n10,
        student_only=n01,
        both_wrong=n00,
        drop_points=100.0 * (n10 - n01) / n,
        drop_ci_low=q(drop, lo_q),
        drop_ci_high=q(drop, hi_q),
        relative_drop=(n10 - n01) / t_correct if t_correct else 0.0,
        relative_ci_low=q(relative, lo_q),
        relative_ci_high=q(relative, hi_q),
        mcnemar_p_value=mcnemar_exact(n10, n01),
        confidence=confidence,
        resamples=resamples,
        seed=seed,
    )


# ---------------------------------------------------------------- continuous scores


@dataclass(frozen=True)
class PairedScoreStatistics:
    """Interval and test for the change of a continuous per-sample score.

    ``change`` is signed so that a positive value is always *worse*: ``teacher -
    student`` for a score where higher is better (a drop), ``student - teacher`` where
    lower is better (an increase, e.g. absolute error or NLL). ``relative_change`` is
    ``change / |teacher mean|``.
    """

    samples: int
    metric: str
    higher_is_better: bool
    teacher_mean: float
    student_mean: float
    change: float
    change_ci_low: float
    change_ci_high: float
    relative_change: float
    relative_ci_low: float
    relative_ci_high: float
    p_value: float
    confidence: float
    resamples: int
    seed: int
    method: str = "paired bootstrap (percentile) of the mean change, paired t-test"

    @property
    def worse(self) -> str:
        """What a positive change is called: ``drop`` (higher is better) or ``increase``."""
        return "drop" if self.higher_is_better else "increase"

    def deltas(self) -> dict[str, float]:
        """The interval and test as flat ``delta.<metric>.*`` measurements (report, MLflow,
        gate): ``<drop|increase>_ci_low/high`` of the change in the metric's unit,
        ``relative_<drop|increase>_ci_low/high`` of the relative change, ``p_value``.
        The gate's confident rule reads the intervals of ``thresholds.metrics.<metric>``'s
        ``max_<drop|increase>`` and ``max_relative_<drop|increase>``."""
        base, w = f"delta.{self.metric}.", self.worse
        return {
            f"{base}{w}_ci_low": self.change_ci_low,
            f"{base}{w}_ci_high": self.change_ci_high,
            f"{base}relative_{w}_ci_low": self.relative_ci_low,
            f"{base}relative_{w}_ci_high": self.relative_ci_high,
            f"{base}p_value": self.p_value,
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PairedScoreStatistics:
        """The inverse of :meth:`to_dict` (the report's ``statistics`` section of a task
        other than classification)."""
        return cls(
            samples=int(data["samples"]),
            metric=str(data["metric"]),
            higher_is_better=bool(data["higher_is_better"]),
            teacher_mean=float(data["teacher_mean"]),
            student_mean=float(data["student_mean"]),
            change=float(data["change"]),
            change_ci_low=float(data["change_ci_low"]),
            change_ci_high=float(data["change_ci_high"]),
            relative_change=float(data["relative_change"]),
            relative_ci_low=float(data["relative_ci_low"]),
            relative_ci_high=float(data["relative_ci_high"]),
            p_value=float(data["p_value"]),
            confidence=float(data["confidence"]),
            resamples=int(data["resamples"]),
            seed=int(data["seed"]),
            method=str(data.get("method", cls.method)),
        )


def statistics_from_dict(data: Mapping[str, Any]) -> PairedStatistics | PairedScoreStatistics:
    """Either statistics section of a report: continuous scores name their ``metric``."""
    if "metric" in data:
        return PairedScoreStatistics.from_dict(data)
    return PairedStatistics.from_dict(data)


def is_binary(*scores: np.ndarray) -> bool:
    """Whether every score is 0 or 1 (correct / wrong): McNemar applies."""
    import numpy as np

    return all(bool(np.isin(np.asarray(s), (0.0, 1.0)).all()) for s in scores)


def paired_t_p_value(diff: np.ndarray) -> float:
    """Two-sided p-value of a paired t-test that the mean difference is 0.

    Identical scores (every difference 0) give 1.0; a constant non-zero difference
    (no spread, so no t statistic) gives 0.0.
    """
    import numpy as np
    from scipy import stats

    d = np.asarray(diff, dtype=np.float64)
    if len(d) < 2 or not d.any():
        return 1.0
    if float(d.std(ddof=1)) == 0.0:
        return 0.0
    with warnings.catch_warnings():
        # differences equal up to rounding (a student identical but for float noise):
        # scipy warns of precision loss; the p-value is still the one to report
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(stats.ttest_1samp(d, 0.0).pvalue)


def paired_score_statistics(
    teacher_scores: np.ndarray,
    student_scores: np.ndarray,
    *,
    metric: str,
    higher_is_better: bool,
    confidence: float = 0.95,
    resamples: int = 10_000,
    seed: int = 0,
    chunk: int = 256,
) -> PairedScoreStatistics:
    """Paired bootstrap interval of the mean change, and a paired t-test.

    Resamples are drawn ``chunk`` at a time, so memory stays at ``chunk x samples``
    indices whatever ``resamples`` is; the same seed gives the same interval.
    """
    import numpy as np

    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    t = np.asarray(teacher_scores, dtype=np.float64)
    s = np.asarray(student_scores, dtype=np.float64)
    if t.shape != s.shape or t.ndim != 1:
        raise ValueError(
            f"paired scores must be 1-D and equal in length, got {t.shape} and {s.shape}"
        )
    n = len(t)
    if n == 0:
        raise ValueError("no paired samples")
    sign = 1.0 if higher_is_better else -1.0
    diff = sign * (t - s)  # positive = worse
    rng = np.random.default_rng(seed)
    changes = np.empty(resamples)
    relative = np.empty(resamples)
    for start in range(0, resamples, chunk):
        k = min(chunk, resamples - start)
        idx = rng.integers(0, n, size=(k, n))
        d_mean = diff[idx].mean(axis=1)
        t_mean = np.abs(t[idx].mean(axis=1))
        changes[start : start + k] = d_mean
        relative[start : start + k] = np.divide(
            d_mean, t_mean, out=np.zeros_like(d_mean), where=t_mean > 0
        )
    alpha = (1.0 - confidence) / 2.0
    t_mean_all = float(t.mean())
    change = float(diff.mean())
    return PairedScoreStatistics(
        samples=n,
        metric=metric,
        higher_is_better=higher_is_better,
        teacher_mean=t_mean_all,
        student_mean=float(s.mean()),
        change=change,
        change_ci_low=float(np.quantile(changes, alpha)),
        change_ci_high=float(np.quantile(changes, 1.0 - alpha)),
        relative_change=change / abs(t_mean_all) if t_mean_all else 0.0,
        relative_ci_low=float(np.quantile(relative, alpha)),
        relative_ci_high=float(np.quantile(relative, 1.0 - alpha)),
        p_value=paired_t_p_value(diff),
        confidence=confidence,
        resamples=resamples,
        seed=seed,
    )
