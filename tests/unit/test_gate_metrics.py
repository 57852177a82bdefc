"""Thresholds on a task's metrics by name: the pure part the gate decides with."""

from __future__ import annotations

import pytest

from ci_compress.config import parse_config
from ci_compress.gate import decide, derive, metric_figures, metric_rules
from tests.helpers.configs import base_config


def test_metric_thresholds_flatten_and_decide() -> None:
    cfg = parse_config(
        base_config(
            task={"type": "language-model"},
            thresholds={
                "metrics": {
                    "perplexity": {"max_relative_increase": 0.05},
                    "next_token_agreement": {"min_value": 0.9},
                }
            },
        )
    )
    thresholds = cfg.thresholds.active()
    assert thresholds == {
        "metrics.next_token_agreement.min_value": 0.9,
        "metrics.perplexity.max_relative_increase": 0.05,
    }
    teacher = {"perplexity": 20.0, "next_token_agreement": 1.0, "nll": 3.0}
    student = {"perplexity": 21.5, "next_token_agreement": 0.93, "nll": 3.07}
    figures = metric_figures(teacher, student)
    assert figures["delta.perplexity.relative_increase"] == pytest.approx(0.075)
    assert figures["delta.nll.increase"] == pytest.approx(0.07)
    result = decide(thresholds, figures, rules=metric_rules(thresholds))
    assert not result.passed
    failed = {c.threshold: c for c in result.failures}
    assert list(failed) == ["metrics.perplexity.max_relative_increase"]
    assert failed["metrics.perplexity.max_relative_increase"].message == (
        "metrics.perplexity.max_relative_increase: delta.perplexity.relative_increase = 0.075, "
        "must be at most 0.05 (FAILED)"
    )


def test_higher_is_better_figures() -> None:
    figures = metric_figures({"cosine": 1.0, "only_teacher": 2.0}, {"cosine": 0.97})
    assert figures["delta.cosine.drop"] == pytest.approx(0.03)
    assert figures["delta.cosine.recovery"] == pytest.approx(0.97)
    assert not any(k.startswith("delta.only_teacher") for k in figures)
    thresholds = {"metrics.cosine.min_recovery": 0.98, "metrics.cosine.max_drop": 0.05}
    result = decide(thresholds, figures, rules=metric_rules(thresholds))
    assert [c.threshold for c in result.failures] == ["metrics.cosine.min_recovery"]
    with pytest.raises(KeyError, match="unknown threshold"):
        decide(thresholds, figures)  # without the rules the names are unknown


def test_figures_follow_each_metric_direction() -> None:
    figures = metric_figures(
        {"mae": 1.0, "r2": 0.5, "unlisted": 3.0},
        {"mae": 1.2, "r2": 0.4, "unlisted": 3.0},
        {"mae": False, "r2": True},
    )
    assert sorted(figures) == [
        "delta.mae.increase",
        "delta.mae.relative_increase",
        "delta.mae.value",
        "delta.r2.drop",
        "delta.r2.recovery",
        "delta.r2.relative_drop",
        "delta.r2.value",
    ]
    assert figures["delta.mae.relative_increase"] == pytest.approx(0.2)


def test_derive_without_accuracy_keeps_size_and_latency() -> None:
    got = derive(
        {
            "teacher.file_bytes": 300.0,
            "student.file_bytes": 100.0,
            "teacher.latency_ms": 2.0,
            "student.latency_ms": 1.0,
        }
    )
    assert got == {"delta.compression_ratio": 3.0, "delta.latency_ratio": 0.5}


@pytest.mark.parametrize(
    ("low", "high", "outcome"),
    [(0.06, 0.09, "fail"), (0.01, 0.04, "pass"), (0.03, 0.07, "inconclusive")],
)
def test_the_confident_rule_reads_the_primary_metrics_interval(
    low: float, high: float, outcome: str
) -> None:
    thresholds = {"metrics.nll.max_increase": 0.05, "metrics.next_token_agreement.min_value": 0.9}
    figures = {
        **metric_figures(
            {"nll": 3.0, "next_token_agreement": 1.0},
            {"nll": 3.05, "next_token_agreement": 0.95},
            {"nll": False, "next_token_agreement": True},
        ),
        "delta.nll.increase_ci_low": low,
        "delta.nll.increase_ci_high": high,
    }
    result = decide(
        thresholds,
        figures,
        decision="confident",
        rules=metric_rules(thresholds),
    )
    checks = {c.threshold: c for c in result.checks}
    assert checks["metrics.nll.max_increase"].outcome == outcome
    assert (
        checks["metrics.nll.max_increase"].ci_low,
        checks["metrics.nll.max_increase"].ci_high,
    ) == (
        low,
        high,
    )
    # a metric without paired scores is decided on its point value
    assert checks["metrics.next_token_agreement.min_value"].outcome == "pass"
    assert checks["metrics.next_token_agreement.min_value"].ci_low is None
    assert result.verdict == outcome
