"""Rendering an explain result: the ranking table, its Markdown, the bar chart.

Renderers take the result as a dict (``ExplainResult.to_dict()``, or as read back from
report.json) and decide nothing. A result with a ``metric`` (a task other than
classification) is labelled with that metric's name, its values and changes in its own
units; without one, top-1 accuracy in percent and drops in points, as always.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ci_compress.files import atomic_write_with


def _metric(data: dict[str, Any]) -> tuple[str, str] | None:
    """(metric name, "drop" or "increase") of a task other than classification."""
    metric = data.get("metric")
    if not metric:
        return None
    return str(metric["name"]), "drop" if metric["higher_is_better"] else "increase"


def _change(data: dict[str, Any], step: dict[str, Any]) -> str:
    """'accuracy drop 1.20 points', or 'mae increase 0.0123'."""
    metric = _metric(data)
    if metric is None:
        return f"accuracy drop {step['drop_points']:.2f} points"
    return f"{metric[0]} {metric[1]} {step['drop_points']:.4g}"


def _rows(data: dict[str, Any]) -> list[tuple[str, ...]]:
    metric = _metric(data)
    rows: list[tuple[str, ...]] = [
        (
            "rank",
            "layer",
            "type",
            "passes",
            "params",
            "drop (pts)" if metric is None else f"{metric[0]} {metric[1]}",
            "accuracy" if metric is None else metric[0],
            "worst class (drop)",
            "bytes saved",
        )
    ]
    for i, s in enumerate(data["layers"], 1):
        worst = (
            f"{s['worst_class']} ({s['worst_class_drop_points']:.1f})"
            if s.get("worst_class") is not None
            else "-"
        )
        rows.append(
            (
                str(i),
                s["layer"],
                s.get("kind", "?"),
                "+".join(s["passes"]),
                f"{s['parameters']:,}",
                f"{s['drop_points']:.2f}" if metric is None else f"{s['drop_points']:.4g}",
                f"{100 * s['accuracy']:.2f}%" if metric is None else f"{s['accuracy']:.4g}",
                worst,
                f"{s['bytes_saved']:,}",
            )
        )
    return rows


def _suggestion_lines(data: dict[str, Any]) -> list[str]:
    sug = data["suggested_exclude"]
    full = data["full"]
    metric = _metric(data)
    quality = "accuracy" if metric is None else metric[0]
    lines = [
        f"configured compression: {_change(data, full)}"
        + (
            f" ({quality} thresholds met)"
            if full["accuracy_passed"]
            else f" ({quality} thresholds FAILED)"
        )
    ]
    if sug == []:
        lines.append(
            f"nothing to exclude: the configured compression meets the {quality} thresholds"
        )
    elif sug:
        last = data["steps"][-1]
        lines.append(
            f"suggested exclude: {sug} -> {_change(data, last)}, "
            f"{last['figures']['delta.compression_ratio']:.2f}x smaller "
            f"(verified by a full run; {'all measured thresholds met' if last['gate_passed'] else quality + ' thresholds met'})"
        )
        for p in data["suggested_passes"]:
            if p.get("remove"):
                lines.append(
                    f"  passes[{p['index']}] ({p['type']}): remove it (it would touch no layer)"
                )
            else:
                lines.append(f"  passes[{p['index']}] ({p['type']}): exclude: {p['exclude']}")
    for note in data["notes"]:
        lines.append(f"note: {note}")
    return lines


def terminal_table(data: dict[str, Any]) -> str:
    """The ranking as an aligned text table, then the suggestion."""
    rows = _rows(data)
    w = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    right = {0, 4, 5, 6, 8}
    lines = ["per-layer sensitivity (each layer compressed alone, others untouched):"]
    for i, r in enumerate(rows):
        cells = [c.rjust(w[j]) if j in right else c.ljust(w[j]) for j, c in enumerate(r)]
        lines.append("  " + "  ".join(cells).rstrip())
        if i == 0:
            lines.append("  " + "  ".join("-" * x for x in w))
    lines += ["", *_suggestion_lines(data)]
    return "\n".join(lines)


def _change_label(data: dict[str, Any]) -> str:
    metric = _metric(data)
    return "accuracy drop" if metric is None else f"{metric[0]} {metric[1]}"


def markdown_section(data: dict[str, Any]) -> str:
    rows = _rows(data)
    out = [
        "### Per-layer sensitivity",
        "",
        "Each layer compressed alone with the configured passes (others untouched); "
        + (
            "accuracy drop on the holdout, most sensitive first."
            if _metric(data) is None
            else f"{_change_label(data)} on the holdout, most sensitive first."
        ),
        "",
        "| " + " | ".join(rows[0]) + " |",
        "|---:|---|---|---|---:|---:|---:|---|---:|",
    ]
    out += [
        "| " + " | ".join(f"`{c}`" if j == 1 else c for j, c in enumerate(r)) + " |"
        for r in rows[1:]
    ]
    out += [""] + [f"- {line.strip()}" for line in _suggestion_lines(data)]
    return "\n".join(out)


def write_chart(data: dict[str, Any], path: Path) -> Path:
    """A horizontal bar chart of the per-layer drops (matplotlib, Agg, no global state).

    ``data`` is an explain result as a dict (``ExplainResult.to_dict()``).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    metric = _metric(data)
    layers = data["layers"]
    names = [s["layer"] for s in layers][::-1]
    drops = [s["drop_points"] for s in layers][::-1]
    fig = Figure(figsize=(7.0, 1.2 + 0.4 * max(len(layers), 1)), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    colors = ["#c0392b" if d > 0 else "#7f8c8d" for d in drops]
    ax.barh(names, drops, color=colors)
    for y, d in enumerate(drops):
        ax.annotate(
            f"{d:.2f}" if metric is None else f"{d:.4g}",
            (d, y),
            xytext=(3, 0),
            textcoords="offset points",
            va="center",
            fontsize=8,
        )
    limit_name = "max_accuracy_drop" if metric is None else f"metrics.{metric[0]}.max_{metric[1]}"
    limit = data["thresholds"].get(limit_name)
    if limit is not None:
        ax.axvline(
            limit,
            color="#2c3e50",
            linestyle="--",
            linewidth=1,
            label=f"{limit_name} {limit:g}",
        )
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xlabel(
        "accuracy drop when only this layer is compressed (points)"
        if metric is None
        else f"{metric[0]} {metric[1]} when only this layer is compressed"
    )
    ax.set_title("ci-compress: per-layer sensitivity")
    fig.tight_layout()
    atomic_write_with(path, lambda f: fig.savefig(f, format="png", metadata={"Software": None}))
    return path
