"""The latency check does not flip on noise (issue 16 item 8).

Before: ``delta.latency_ratio`` was the ratio of two medians and the gate compared it
as a point, so ten identical runs of the README's gate (``max_latency_ratio: 1.2``)
gave ratios from 1.18 to 1.42 and one in ten passed. Now the ratio is the median of
paired per-repeat ratios (teacher and student timed in alternating turns), with a
sign-test interval, and the confident rule decides on the interval as it does for the
accuracy drop.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
import torch
from torch import nn

from ci_compress.evaluation.performance import latency_ratio, latency_samples
from ci_compress.gate import decide


def test_the_interval_is_the_sign_test_interval_of_the_median() -> None:
    teacher = [1.0] * 30
    student = [1.0 + i / 100 for i in range(30)]  # ratios 1.00 .. 1.29, sorted
    r = latency_ratio(teacher, student, confidence=0.95)
    # n = 30 at 95%: ranks 10 and 21 (P(Binomial(30, 1/2) <= 9) = 0.021 <= 0.025)
    assert (r.low, r.high) == pytest.approx((1.09, 1.20))
    assert r.ratio == pytest.approx(1.145) and r.repeats == 30 and r.exact


def test_too_few_repeats_give_the_whole_range_and_say_so() -> None:
    r = latency_ratio([1.0] * 5, [1.1, 1.3, 1.2, 1.4, 1.0], confidence=0.95)
    assert not r.exact and (r.low, r.high) == pytest.approx((1.0, 1.4))
    assert latency_ratio([1.0] * 6, [1.0] * 6, confidence=0.95).exact


def test_pairs_cancel_a_slow_moment_that_the_ratio_of_medians_does_not() -> None:
    """A runner that slows down for a stretch: both models of a turn see it."""
    rng = random.Random(0)
    teacher, student = [], []
    for i in range(30):
        load = 3.0 if 10 <= i < 25 else 1.0  # a noisy neighbour for half the repeats
        t = 1.0 * load * (1 + rng.gauss(0, 0.02))
        teacher.append(t)
        student.append(1.25 * t * (1 + rng.gauss(0, 0.02)))
    r = latency_ratio(teacher, student, confidence=0.95)
    assert r.low <= 1.25 <= r.high and r.high - r.low < 0.05


def test_the_interval_covers_the_true_ratio_about_as_often_as_it_says() -> None:
    rng = random.Random(1)
    covered = 0
    for _ in range(400):
        t = [rng.lognormvariate(0, 0.3) for _ in range(30)]
        s = [x * 1.2 * rng.lognormvariate(0, 0.1) for x in t]
        r = latency_ratio(t, s, confidence=0.95)
        covered += r.low <= 1.2 <= r.high
    assert covered / 400 >= 0.93


class Recorder(nn.Module):
    def __init__(self, name: str, calls: list[str]) -> None:
        super().__init__()
        self.name, self.calls = name, calls

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(self.name)
        return x


def test_the_models_take_turns_in_alternating_order(monkeypatch: pytest.MonkeyPatch) -> None:
    import ci_compress.evaluation.performance as performance

    monkeypatch.setattr(performance, "TIME_BUDGET_MS", 0.0)  # exactly `repeats` turns
    calls: list[str] = []
    models: dict[str, Any] = {"teacher": Recorder("t", calls), "student": Recorder("s", calls)}
    times = latency_samples(models, torch.zeros(2, 3), repeats=4, warmup=0)
    assert calls == ["t", "s", "s", "t", "t", "s", "s", "t"]
    assert [len(v) for v in times.values()] == [4, 4]


def test_fast_models_get_more_turns_within_the_budget() -> None:
    calls: list[str] = []
    models: dict[str, Any] = {"teacher": Recorder("t", calls), "student": Recorder("s", calls)}
    times = latency_samples(models, torch.zeros(2, 3), repeats=3, warmup=0)
    turns = len(times["teacher"])
    assert 3 < turns <= 1000 and len(times["student"]) == turns


@pytest.mark.parametrize(
    ("low", "high", "outcome", "code"),
    [(1.25, 1.40, "fail", 1), (1.05, 1.15, "pass", 0), (1.15, 1.30, "inconclusive", 5)],
)
def test_the_confident_rule_decides_latency_on_its_interval(
    low: float, high: float, outcome: str, code: int
) -> None:
    figures = {
        "delta.latency_ratio": (low + high) / 2,
        "delta.latency_ratio_ci_low": low,
        "delta.latency_ratio_ci_high": high,
    }
    result = decide({"max_latency_ratio": 1.2}, figures, decision="confident")
    (check,) = result.checks
    assert check.outcome == outcome and result.exit_code == code
    assert (check.ci_low, check.ci_high) == (low, high)
    assert "95% interval" in check.message


def test_the_point_rule_shows_the_interval_and_a_ratio_without_one_is_a_point() -> None:
    figures = {
        "delta.latency_ratio": 1.22,
        "delta.latency_ratio_ci_low": 1.1,
        "delta.latency_ratio_ci_high": 1.3,
    }
    (check,) = decide({"max_latency_ratio": 1.2}, figures).checks
    assert check.outcome == "fail" and "interval [1.1x, 1.3x]" in check.message
    (check,) = decide(
        {"max_latency_ratio": 1.2}, {"delta.latency_ratio": 1.1}, decision="confident"
    ).checks
    assert check.outcome == "pass" and check.ci_low is None
