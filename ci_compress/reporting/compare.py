"""Comparing two report.json files for reproducibility, timings left out.

Same inputs must give the same measurements and decision. What may differ between two
runs of the same gate is only what measures the clock or names this run: latency
figures (and the ratio derived from them), pass seconds, the MLflow run, the paths of
the files written, warnings that quote timings. :func:`without_timings` drops exactly
those, so whatever is left must be byte-identical.
"""

from __future__ import annotations

import json
from typing import Any

# Keys whose values are timings or run identity, wherever they appear.
VOLATILE_KEYS = frozenset({"latency_ms", "seconds", "mlflow", "artifacts", "file", "warnings"})
VOLATILE_METRICS = ("latency_ms", "latency_ratio", "latency_ratio_ci_low", "latency_ratio_ci_high")


def without_timings(report: dict[str, Any]) -> dict[str, Any]:
    """A copy of a report.json dict without timings, run ids and paths."""

    def clean(value: Any, key: str = "") -> Any:
        if isinstance(value, dict):
            return {
                k: clean(v, k)
                for k, v in value.items()
                if k not in VOLATILE_KEYS and not any(k.endswith(m) for m in VOLATILE_METRICS)
            }
        if isinstance(value, list):
            out = [clean(v, key) for v in value]
            if key == "checks":  # a latency check's measured value is a timing
                out = [c for c in out if c.get("threshold") != "max_latency_ratio"]
            return out
        return value

    return clean(report)  # type: ignore[no-any-return]


def canonical(report: dict[str, Any]) -> str:
    """The timing-free report as canonical JSON text (compare these bytes)."""
    return json.dumps(without_timings(report), indent=2, sort_keys=True)
