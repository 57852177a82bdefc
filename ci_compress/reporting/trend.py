"""The trend across builds: this candidate against the last promoted versions.

Each gate compares the candidate with the original (and the champion); a slow drift that
every single gate allows (a tenth of a point per merge) only shows across versions. The
pipeline reads the last N promoted versions from the registry
(:meth:`~ci_compress.tracking.Tracker.promoted_history`: the version tags say which were
promoted, each version's gate run holds its metrics) and :func:`build_trend` puts them
beside the candidate in ``report.json``'s ``trend``; :func:`markdown_section` renders the
table for the PR comment, job summary and MR note, :func:`write_chart` the PNG logged to
MLflow with the run.

The quality column is top-1 accuracy for classification; a gate on another task shows
its primary metric instead (``mae``, ``f1``, ``cosine``, ``nll``, ...: the metric of its
paired statistics), by name, so ``trend.metrics`` is ``["mae", "file_bytes",
"latency_ms"]`` and the renderers read their columns from that list.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ci_compress.evaluation.statistics import PairedScoreStatistics

if TYPE_CHECKING:
    from ci_compress.report import Report
    from ci_compress.tracking import PromotedVersion

TREND_VERSIONS = 5  # promoted versions shown beside the candidate
# (metric, label, kind): the quality, the size that ships and the speed
TREND_METRICS: tuple[tuple[str, str, str], ...] = (
    ("accuracy", "top-1 accuracy", "pct"),
    ("file_bytes", "shipped file (bytes)", "int"),
    ("latency_ms", "latency, median (ms)", "ms"),
)


def trend_metrics(report: Report) -> tuple[tuple[str, str, str], ...]:
    """TREND_METRICS, with the task's primary metric in place of accuracy on a task other
    than classification."""
    st = report.statistics
    if "delta.accuracy_drop_points" in report.deltas or not isinstance(st, PairedScoreStatistics):
        return TREND_METRICS
    return ((st.metric, st.metric, "num"), *TREND_METRICS[1:])


def _columns(trend: Mapping[str, Any]) -> tuple[tuple[str, str, str], ...]:
    """The (metric, label, kind) columns of a trend section, from its ``metrics`` list."""
    known = {key: (key, label, kind) for key, label, kind in TREND_METRICS}
    keys = trend.get("metrics") or [key for key, _l, _k in TREND_METRICS]
    return tuple(known.get(str(k), (str(k), str(k), "num")) for k in keys)


def build_trend(
    history: Sequence[PromotedVersion], report: Report, *, registered_model: str, alias: str
) -> dict[str, Any]:
    """The ``trend`` section of report.json: one row per promoted version (oldest first),
    then the candidate, with the same student metrics."""
    columns = trend_metrics(report)

    def pick(metrics: dict[str, float], prefix: str) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for key, _label, _kind in columns:
            v = metrics.get(f"{prefix}{key}")
            out[key] = None if v is None or math.isnan(float(v)) else float(v)
        return out

    rows = [
        {
            "version": h.version,
            "current": h.current,
            "run_id": h.run_id,
            **pick(dict(h.metrics), "student."),
        }
        for h in history
    ]
    return {
        "registered_model": registered_model,
        "alias": alias,
        "versions": len(rows),
        "rows": rows,
        "candidate": pick(dict(report.student.metrics), ""),
        "metrics": [key for key, _label, _kind in columns],
    }


def _fmt(v: Any, kind: str) -> str:
    if v is None:
        return "-"
    if kind == "pct":
        return f"{100 * float(v):.2f}%"
    if kind == "int":
        return f"{int(v):,}"
    if kind == "num":
        return f"{float(v):.4g}"
    return f"{float(v):.3f}"


def drift_line(trend: Mapping[str, Any]) -> str:
    """How the candidate differs from the oldest promoted version shown."""
    rows = trend.get("rows") or []
    if not rows:
        return ""
    first, cand = rows[0], trend["candidate"]
    parts = []
    quality = _columns(trend)[0][0]
    a0, a1 = first.get(quality), cand.get(quality)
    if a0 is not None and a1 is not None:
        parts.append(
            f"accuracy {100 * (a1 - a0):+.2f} points"
            if quality == "accuracy"
            else f"{quality} {a1 - a0:+.4g}"
        )
    for key, word in (("file_bytes", "shipped file"), ("latency_ms", "latency")):
        v0, v1 = first.get(key), cand.get(key)
        if v0 and v1 is not None:
            parts.append(f"{word} {100 * (v1 / v0 - 1):+.1f}%")
    return f"since v{first['version']}: " + ", ".join(parts) if parts else ""


def markdown_section(trend: Mapping[str, Any]) -> list[str]:
    """The trend table (Markdown lines), or [] when there is nothing to compare with."""
    rows = trend.get("rows") or []
    name, alias = trend.get("registered_model", ""), trend.get("alias", "")
    if not rows:
        return ["", f"Trend: no promoted version of `{name}` yet; this candidate starts it."]
    columns = _columns(trend)
    out = [
        "",
        f"**Trend**: this candidate against the last {len(rows)} promoted version(s) of "
        f"`{name}` (`@{alias}` marks the current one)",
        "",
        "| version | " + " | ".join(label for _k, label, _kind in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for row in rows:
        tag = f"v{row['version']}" + (f" `@{alias}`" if row.get("current") else "")
        cells = [_fmt(row.get(k), kind) for k, _label, kind in columns]
        out.append(f"| {tag} | " + " | ".join(cells) + " |")
    cand = trend["candidate"]
    cells = [f"**{_fmt(cand.get(k), kind)}**" for k, _label, kind in columns]
    out.append("| **candidate** | " + " | ".join(cells) + " |")
    drift = drift_line(trend)
    if drift:
        out += ["", f"Drift {drift}."]
    return out


def write_chart(trend: Mapping[str, Any], path: Path) -> Path:
    """One small panel per metric: the promoted versions, then the candidate (matplotlib,
    Agg, no global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = trend.get("rows") or []
    labels = [f"v{r['version']}" for r in rows] + ["candidate"]
    values = [*rows, trend["candidate"]]
    fig = Figure(figsize=(9.0, 2.8), dpi=100)
    FigureCanvasAgg(fig)
    columns = _columns(trend)
    axes = fig.subplots(1, len(columns))
    for ax, (key, label, kind) in zip(axes, columns, strict=True):
        ys = [v.get(key) for v in values]
        scale = 100.0 if kind == "pct" else 1.0
        xs = [i for i, y in enumerate(ys) if y is not None]
        pts = [float(y) * scale for y in ys if y is not None]
        ax.plot(xs, pts, marker="o", color="#2c3e50", linewidth=1)
        if ys[-1] is not None:
            ax.plot([len(ys) - 1], [float(ys[-1]) * scale], marker="o", color="#c0392b")
        ax.set_xticks(range(len(labels)), labels, rotation=45, fontsize=7)
        ax.set_title(label + (" (%)" if kind == "pct" else ""), fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
    fig.suptitle(
        f"{trend.get('registered_model', '')}: candidate vs. the last promoted versions",
        fontsize=9,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(str(path))
    return path
