"""Terminal table, Markdown and JSON renderings of a :class:`~ci_compress.report.Report`."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from ci_compress.report import Report

# (metric key, label, formatter)
ROWS: list[tuple[str, str, str]] = [
    ("accuracy", "top-1 accuracy", "pct"),
    ("agreement", "agreement with teacher", "pct"),
    ("file_bytes", "shipped file (bytes)", "int"),
    ("parameters", "parameters", "int"),
    ("nonzero_parameters", "nonzero parameters", "int"),
    ("sparsity", "sparsity", "pct"),
    ("latency_ms", "latency, median (ms)", "ms"),
    ("memory_bytes", "tensor memory (bytes)", "int"),
]


def _fmt(v: Any, kind: str) -> str:
    if v is None:
        return "-"
    if kind == "pct":
        return f"{100 * float(v):.2f}%"
    if kind == "int":
        return f"{int(v):,}"
    if kind == "ms":
        return f"{float(v):.3f}"
    return str(v)


def table_rows(report: Report) -> list[tuple[str, str, str]]:
    rows = []
    for key, label, kind in ROWS:
        t, s = report.teacher.metrics.get(key), report.student.metrics.get(key)
        if t is None and s is None:
            continue
        rows.append((label, _fmt(t, kind), _fmt(s, kind)))
    return rows


def verdict_line(report: Report) -> str:
    word = "PASSED" if report.passed else "FAILED"
    d = report.deltas
    return (
        f"ci-compress gate {word}: accuracy drop {d['delta.accuracy_drop_points']:.2f} points, "
        f"{d['delta.compression_ratio']:.2f}x smaller"
        + (f", latency x{d['delta.latency_ratio']:.2f}" if "delta.latency_ratio" in d else "")
    )


def terminal(report: Report) -> str:
    rows = [("metric", "teacher", "student"), *table_rows(report)]
    w = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [verdict_line(report), ""]
    for i, r in enumerate(rows):
        lines.append(f"  {r[0]:<{w[0]}}  {r[1]:>{w[1]}}  {r[2]:>{w[2]}}")
        if i == 0:
            lines.append(f"  {'-' * w[0]}  {'-' * w[1]}  {'-' * w[2]}")
    lines.append("")
    for c in report.gate.checks:
        lines.append(f"  [{'ok' if c.passed else 'FAIL'}] {c.message}")
    for w in report.warnings:
        lines.append(f"  warning: {w}")
    if report.passes:
        lines.append("")
        lines.append("  passes: " + " -> ".join(p["name"] for p in report.passes))
    worst = report.per_class.get("worst", {}).get("student")
    if worst:
        lines.append(
            f"  worst class: {worst['label']} (drop {worst['drop_points']:.2f} points; per-class table in report.md)"
        )
    if report.explain:
        from ci_compress.explain import terminal_table

        lines += ["", *("  " + line for line in terminal_table(report.explain).splitlines())]
    if report.mlflow.get("run_id"):
        lines.append(
            f"  mlflow run: {report.mlflow['run_id']}"
            + (f" ({report.mlflow['run_url']})" if report.mlflow.get("run_url") else "")
        )
    if report.artifacts.get("report_json"):
        lines.append(f"  report: {report.artifacts['report_json']}")
    return "\n".join(lines)


def markdown(report: Report) -> str:
    icon = "✅" if report.passed else "❌"
    out = [f"## {icon} {verdict_line(report)}", ""]
    out += ["| threshold | measured | limit | result |", "|---|---|---|---|"]
    for c in report.gate.checks:
        out.append(
            f"| `{c.threshold}` | {c.measured:.4g} | {c.limit:.4g} | {'pass' if c.passed else '**FAIL**'} |"
        )
    out += ["", "| metric | teacher | student |", "|---|---:|---:|"]
    out += [f"| {a} | {b} | {c} |" for a, b, c in table_rows(report)]
    if report.passes:
        out += ["", "**Passes:** " + " → ".join(f"`{p['name']}`" for p in report.passes)]
    for w in report.warnings:
        out += ["", f"> **Warning:** {w}"]
    out += per_class_markdown(report.per_class)
    if report.explain:
        from ci_compress.explain import markdown_section

        out += ["", markdown_section(report.explain)]
    h = report.holdout
    out += [
        "",
        f"Holdout: `{h.get('name')}`, {h.get('samples')} samples, sha256 `{str(h.get('sha256', ''))[:12]}`.",
    ]
    if report.mlflow.get("run_id"):
        link = report.mlflow.get("run_url")
        out.append(
            f"MLflow run: {'[' + report.mlflow['run_id'] + '](' + link + ')' if link else '`' + report.mlflow['run_id'] + '`'}."
        )
    return "\n".join(out) + "\n"


def per_class_markdown(per_class: dict[str, Any]) -> list[str]:
    """The per-class accuracy table (one column per role, one drop column per compared role)."""
    classes = per_class.get("classes") or []
    if not classes:
        return []
    roles = per_class["roles"]
    ref = per_class["reference"]
    others = [r for r in roles if r != ref]
    head = ["class", "samples", *roles, *(f"drop {r} (points)" for r in others)]
    out = [
        "",
        "<details><summary>Per-class accuracy</summary>",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---:|" * len(head),
    ]
    for row in classes:
        cells = [str(row["label"]), str(row["samples"])]
        cells += [f"{100 * row['accuracy'][r]:.2f}%" for r in roles]
        flagged = row["label"] in per_class.get("flagged", [])
        cells += [
            f"**{row['drop_points'][r]:.2f}**"
            if flagged and r == "student"
            else f"{row['drop_points'][r]:.2f}"
            for r in others
        ]
        out.append("| " + " | ".join(cells) + " |")
    out += ["", "</details>"]
    if per_class.get("flagged"):
        out += [
            "",
            f"**Classes over `max_class_drop` ({per_class['max_class_drop']:g} points):** "
            + ", ".join(f"`{label}`" for label in per_class["flagged"]),
        ]
    return out


def atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_reports(report: Report, out_dir: Path) -> dict[str, Path]:
    """Write report.json, report.md and manifest.json (when recorded); returns their paths."""
    paths = {"report_json": out_dir / "report.json", "report_md": out_dir / "report.md"}
    if report.reproducibility:
        paths["manifest_json"] = out_dir / "manifest.json"
    report.artifacts.update({k: str(v) for k, v in paths.items()})
    atomic_write(
        paths["report_json"], json.dumps(report.to_dict(), indent=2, sort_keys=True) + "\n"
    )
    atomic_write(paths["report_md"], markdown(report))
    if report.reproducibility:
        atomic_write(
            paths["manifest_json"],
            json.dumps(report.reproducibility, indent=2, sort_keys=True) + "\n",
        )
    return paths
