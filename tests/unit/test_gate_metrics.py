"""Thresholds on a task's metrics by name: the pure part the gate will decide with."""

from __future__ import annotations

import pytest

from ci_compress.config import parse_config
from ci_compress.gate import decide, metric_figures, metric_rules
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
