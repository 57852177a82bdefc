"""Rendering an explain result: the ranking table, its Markdown, the bar chart.

Renderers take the result as a dict (``ExplainResult.to_dict()``, or as read back from
report.json) and decide nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ci_compress.files import atomic_write_with


def _rows(data: dict[str, Any]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = [
        (
            "rank",
            "layer",
            "type",
            "passes",
            "params",
            "drop (pts)",
            "accuracy",
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
                f"{s['drop_points']:.2f}",
                f"{100 * s['accuracy']:.2f}%",
                worst,
                f"{s['bytes_saved']:,}",
            )
        )
    return rows


def _suggestion_lines(data: dict[str, Any]) -> list[str]:
    sug = data["suggested_exclude"]
    full = data["full"]
    lines = [
        f"configured compression: accuracy drop {full['drop_points']:.2f} points"
        + (
            " (accuracy thresholds met)"
            if full["accuracy_passed"]
            else " (accuracy thresholds FAILED)"
        )
    ]
    if sug == []:
        lines.append("nothing to exclude: the configured compression meets the accuracy thresholds")
    elif sug:
        last = data["steps"][-1]
        lines.append(
            f"suggested exclude: {sug} -> accuracy drop {last['drop_points']:.2f} points, "
            f"{last['figures']['delta.compression_ratio']:.2f}x smaller "
            f"(verified by a full run; {'all measured thresholds met' if last['gate_passed'] else 'accuracy thresholds met'})"
        )
        for p in data["suggested_passes"]:
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


def markdown_section(data: dict[str, Any]) -> str:
    rows = _rows(data)
    out = [
        "### Per-layer sensitivity",
        "",
        "Each layer compressed alone with the configured passes (others untouched); "
        "accuracy drop on the holdout, most sensitive first.",
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
            f"{d:.2f}", (d, y), xytext=(3, 0), textcoords="offset points", va="center", fontsize=8
        )
    limit = data["thresholds"].get("max_accuracy_drop")
    if limit is not None:
        ax.axvline(
            limit,
            color="#2c3e50",
            linestyle="--",
            linewidth=1,
            label=f"max_accuracy_drop {limit:g}",
        )
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xlabel("accuracy drop when only this layer is compressed (points)")
    ax.set_title("ci-compress: per-layer sensitivity")
    fig.tight_layout()
    atomic_write_with(path, lambda f: fig.savefig(f, format="png", metadata={"Software": None}))
    return path
