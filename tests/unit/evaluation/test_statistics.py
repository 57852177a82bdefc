"""Paired statistics and the confident decision rule: exact numbers, no torch."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ci_compress.evaluation.statistics import cells, mcnemar_exact, paired_statistics
from ci_compress.gate import decide


def masks(n11: int, n10: int, n01: int, n00: int) -> tuple[np.ndarray, np.ndarray]:
    t = np.array([1] * n11 + [1] * n10 + [0] * n01 + [0] * n00, dtype=bool)
    s = np.array([1] * n11 + [0] * n10 + [1] * n01 + [0] * n00, dtype=bool)
    return t, s


def test_cells_count_the_four_kinds_of_pair() -> None:
    assert cells(*masks(500, 19, 3, 18)) == (500, 19, 3, 18)


@pytest.mark.parametrize(
    ("b", "c", "p"),
    [
        (0, 0, 1.0),
        (3, 3, 1.0),
        (10, 0, 2 * 0.5**10),
        (19, 3, 2 * (1 + 22 + 231 + 1540) / 2**22),
        (0, 7, 2 * 0.5**7),
    ],
)
def test_mcnemar_exact_matches_the_binomial_sums(b: int, c: int, p: float) -> None:
    assert mcnemar_exact(b, c) == pytest.approx(p, rel=1e-12)


def test_mcnemar_handles_large_counts_without_overflow() -> None:
    p = mcnemar_exact(5200, 4800)
    assert 0 < p < 0.01 and math.isfinite(p)


def test_bootstrap_is_seeded_and_brackets_the_point_estimate() -> None:
    t, s = masks(500, 19, 3, 18)  # the demo's prune-0.8 student, see README
    a = paired_statistics(t, s, confidence=0.95, resamples=10_000, seed=0)
    b = paired_statistics(t, s, confidence=0.95, resamples=10_000, seed=0)
    assert a == b
    assert a.drop_points == pytest.approx(100 * 16 / 540)
    assert a.drop_ci_low < a.drop_points < a.drop_ci_high
    assert a.drop_ci_low > 0  # 19 vs 3 discordant: the student is worse, surely
    wider = paired_statistics(t, s, confidence=0.99, resamples=10_000, seed=0)
    assert wider.drop_ci_low <= a.drop_ci_low and wider.drop_ci_high >= a.drop_ci_high


def test_no_discordant_pairs_gives_a_zero_width_interval() -> None:
    st = paired_statistics(*masks(90, 0, 0, 10), seed=0)
    assert (st.drop_ci_low, st.drop_ci_high, st.mcnemar_p_value) == (0.0, 0.0, 1.0)


def test_bootstrap_interval_covers_the_true_drop_about_95_percent_of_the_time() -> None:
    """Simulated holdouts of 300 with a true drop of 2 points: coverage near 0.95."""
    rng = np.random.default_rng(1)
    hits = 0
    trials = 200
    for i in range(trials):
        u = rng.random(300)
        t = u < 0.90
        s = t.copy()
        flip_down = (u < 0.90) & (rng.random(300) < 0.04)
        flip_up = (u >= 0.90) & (rng.random(300) < 0.18)
        s[flip_down] = False
        s[flip_up] = True
        true_drop = 100 * (0.90 * 0.04 - 0.10 * 0.18)
        st = paired_statistics(t, s, resamples=2000, seed=i)
        hits += st.drop_ci_low <= true_drop <= st.drop_ci_high
    assert 0.88 <= hits / trials <= 0.99


FIG = {
    "teacher.accuracy": 0.974,
    "student.accuracy": 0.944,
    "teacher.file_bytes": 2.0,
    "student.file_bytes": 1.0,
    "delta.accuracy_drop_ci_low": 1.30,
    "delta.accuracy_drop_ci_high": 4.63,
}


@pytest.mark.parametrize(
    ("limit", "verdict", "policy", "passed", "code"),
    [
        (1.0, "fail", "fail", False, 1),  # whole interval above the limit
        (1.5, "inconclusive", "fail", False, 5),  # straddles the limit
        (1.5, "inconclusive", "warn", True, 0),
        (1.5, "inconclusive", "pass", True, 0),
        (5.0, "pass", "fail", True, 0),  # whole interval at or below the limit
    ],
)
def test_confident_rule(limit: float, verdict: str, policy: str, passed: bool, code: int) -> None:
    r = decide({"max_accuracy_drop": limit}, FIG, decision="confident", inconclusive=policy)
    assert (r.verdict, r.passed, r.exit_code) == (verdict, passed, code)
    assert "95% interval [1.3 points, 4.63 points]" in r.checks[0].message


def test_point_rule_ignores_the_interval_but_shows_it() -> None:
    r = decide({"max_accuracy_drop": 1.5}, FIG)
    assert (r.verdict, r.exit_code) == ("fail", 1)
    assert "(interval [1.3 points, 4.63 points])" in r.checks[0].message


def test_confident_rule_keeps_point_checks_for_figures_without_an_interval() -> None:
    r = decide({"max_accuracy_drop": 5.0, "min_compression_ratio": 3.0}, FIG, decision="confident")
    assert r.verdict == "fail" and [c.threshold for c in r.failures] == ["min_compression_ratio"]


def test_score_statistics_name_their_metric_in_deltas_and_round_trip() -> None:
    from ci_compress.evaluation.statistics import (
        PairedScoreStatistics,
        paired_score_statistics,
        statistics_from_dict,
    )

    rng = np.random.default_rng(0)
    teacher = rng.random(200)
    lower = paired_score_statistics(
        teacher, teacher + 0.1, metric="mae", higher_is_better=False, resamples=500
    )
    assert lower.worse == "increase" and lower.change == pytest.approx(0.1)
    assert sorted(lower.deltas()) == [
        "delta.mae.increase_ci_high",
        "delta.mae.increase_ci_low",
        "delta.mae.p_value",
        "delta.mae.relative_increase_ci_high",
        "delta.mae.relative_increase_ci_low",
    ]
    higher = paired_score_statistics(
        teacher, teacher - 0.1, metric="cosine", higher_is_better=True, resamples=500
    )
    assert "delta.cosine.drop_ci_low" in higher.deltas()
    back = statistics_from_dict(higher.to_dict())
    assert isinstance(back, PairedScoreStatistics) and back == higher
    accuracy = paired_statistics(np.ones(10, bool), np.ones(10, bool), resamples=100)
    assert statistics_from_dict(accuracy.to_dict()) == accuracy
