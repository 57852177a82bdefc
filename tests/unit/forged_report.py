"""A report forged with non-finite figures (a ratio over a zero denominator), for the
report.json writer's tests."""

from __future__ import annotations

import math

from ci_compress.report import Report, report_from_dict


def forged_report() -> Report:
    check = {
        "threshold": "min_compression_ratio",
        "metric": "delta.compression_ratio",
        "limit": 2.0,
        "measured": math.inf,
        "passed": True,
        "message": "compression ratio inf",
    }
    model = {"file": "m", "file_bytes": 0, "sha256": "0" * 64}
    return report_from_dict(
        {
            "verdict": "pass",
            "gate": {"passed": True, "checks": [check]},
            "teacher": {**model, "metrics": {"accuracy": 0.9, "latency_ms": math.nan}},
            "student": {**model, "metrics": {"accuracy": 0.9, "latency_ms": -math.inf}},
            "deltas": {
                "delta.accuracy_drop_points": 0.0,
                "delta.compression_ratio": math.inf,
                "delta.latency_ratio": math.nan,
            },
            "thresholds": {"min_compression_ratio": 2.0},
            "holdout": {"name": "h", "samples": 1, "sha256": "0" * 64},
            "reproducibility": {"manifest_version": 1, "expected": {"x": math.inf}},
        }
    )
