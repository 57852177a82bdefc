"""Terminal table, Markdown and JSON renderings of a :class:`~ci_compress.report.Report`."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ci_compress.evaluation.statistics import PairedScoreStatistics
from ci_compress.files import atomic_write
from ci_compress.gate import Tightened
from ci_compress.redaction import redact, redact_data
from ci_compress.report import CHAMPION_MOVED, PerClass, Report
from ci_compress.reporting.explain import markdown_section, terminal_table
from ci_compress.reporting.junit import junit_xml
from ci_compress.reporting.trend import drift_line
from ci_compress.reporting.trend import markdown_section as trend_markdown

# (metric key, label, formatter)
ROWS: list[tuple[str, str, str]] = [
    ("accuracy", "top-1 accuracy", "pct"),
    # the metrics of the other tasks (evaluation.tasks), present only for their task
    ("f1", "F1 (per sample)", "f4"),
    ("exact_match", "exact match", "pct"),
    ("mae", "mean absolute error", "f4"),
    ("rmse", "root mean squared error", "f4"),
    ("r2", "R²", "f4"),
    ("cosine", "cosine to teacher", "f4"),
    ("neighbour_agreement", "nearest-neighbour agreement", "pct"),
    ("nll", "NLL per token", "f4"),
    ("perplexity", "perplexity", "f4"),
    ("next_token_accuracy", "next-token accuracy", "pct"),
    ("next_token_agreement", "next-token agreement", "pct"),
    ("agreement", "agreement with teacher", "pct"),
    ("file_bytes", "shipped file (bytes)", "int"),
    ("bits_per_weight", "bits per weight (file)", "f2"),
    ("onnx_agreement", "ONNX export agreement", "pct"),
    ("onnx_max_abs_diff", "ONNX export max |difference|", "f4"),
    ("pt2_agreement", "torch.export (.pt2) agreement", "pct"),
    ("pt2_max_abs_diff", "torch.export (.pt2) max |difference|", "f4"),
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
    if kind == "f2":
        return f"{float(v):.2f}"
    if kind == "f4":
        return f"{float(v):.4g}"
    return str(v)


# What a role's metrics hold beside the task's own metrics (those of every gate).
_COMMON = frozenset(
    {
        "correct",
        "samples",
        "file_bytes",
        "bits_per_weight",
        "parameters",
        "nonzero_parameters",
        "sparsity",
        "latency_ms",
        "memory_bytes",
    }
)


def metric_rows(report: Report) -> list[tuple[str, str, str]]:
    """The table's rows: :data:`ROWS`, with a custom task's metric (named after its
    function) after the first row."""
    known = {key for key, _, _ in ROWS}
    extra = [
        (key, key, "f4")
        for key in report.student.metrics
        if key not in known
        and key not in _COMMON
        and not key.endswith(("_agreement", "_max_abs_diff"))
    ]
    return [ROWS[0], *extra, *ROWS[1:]]


def table_rows(report: Report) -> list[tuple[str, str, str]]:
    out = []
    for key, label, kind in metric_rows(report):
        t, s = report.teacher.metrics.get(key), report.student.metrics.get(key)
        if t is None and s is None:
            continue
        out.append((label, _fmt(t, kind), _fmt(s, kind)))
    return out


def interval_text(report: Report) -> str:
    """`` (95% CI -0.37 to 0.74)`` for the accuracy drop (or the primary metric's
    change), or "" when not measured."""
    st = report.statistics
    if isinstance(st, PairedScoreStatistics):
        return f" ({st.confidence:.0%} CI {st.change_ci_low:+.4g} to {st.change_ci_high:+.4g})"
    d = report.deltas
    lo, hi = d.get("delta.accuracy_drop_ci_low"), d.get("delta.accuracy_drop_ci_high")
    if lo is None or hi is None:
        return ""
    conf = report.statistics.confidence if report.statistics is not None else 0.95
    return f" ({conf:.0%} CI {lo:.2f} to {hi:.2f})"


def statistics_line(report: Report) -> str:
    """One line on how the interval was computed, for every report."""
    st = report.statistics
    if st is None:
        return ""
    if isinstance(st, PairedScoreStatistics):
        better = "higher" if st.higher_is_better else "lower"
        return (
            f"paired statistics over {st.samples} holdout samples of the per-sample {st.metric} "
            f"({better} is better): mean {st.teacher_mean:.4g} (teacher), {st.student_mean:.4g} "
            f"(student), {st.worse} {st.change:+.4g}; {st.confidence:.0%} paired-bootstrap "
            f"interval of the {st.worse} [{st.change_ci_low:+.4g}, {st.change_ci_high:+.4g}] "
            f"({st.resamples} resamples, seed {st.seed}); paired t-test p = {st.p_value:.3g}; "
            f"decision rule: {report.gate.decision}"
        )
    return (
        f"paired statistics over {st.samples} holdout samples: teacher-only correct "
        f"{st.teacher_only}, student-only correct {st.student_only}; "
        f"{st.confidence:.0%} paired-bootstrap interval of the drop "
        f"[{st.drop_ci_low:.2f}, {st.drop_ci_high:.2f}] points "
        f"({st.resamples} resamples, seed {st.seed}); exact McNemar p = {st.mcnemar_p_value:.3g}; "
        f"decision rule: {report.gate.decision}"
    )


def has_champion_column(report: Report) -> bool:
    """Three columns (original, champion, candidate) when a registry baseline is configured."""
    return report.champion is not None or (
        report.baseline is not None and report.baseline.status in ("none", "compared")
    )


def champion_label(report: Report) -> str:
    v = report.baseline.version if report.baseline is not None else None
    return f"champion v{v}" if v else "champion"


def table_rows_with_champion(report: Report) -> list[tuple[str, str, str, str]]:
    """metric, original (teacher), current champion ("-" when none), candidate (student)."""
    c = report.champion.metrics if report.champion is not None else {}
    rows = []
    for key, label, kind in metric_rows(report):
        t, s = report.teacher.metrics.get(key), report.student.metrics.get(key)
        if t is None and s is None and c.get(key) is None:
            continue
        rows.append((label, _fmt(t, kind), _fmt(c.get(key), kind), _fmt(s, kind)))
    return rows


def baseline_lines(report: Report) -> list[str]:
    """One line on the champion baseline and one on the registry, when configured."""
    out = []
    b = report.baseline
    if b is not None and b.status == "none":
        out.append(f"baseline: {b.note}")
    elif b is not None and b.status == "compared":
        out.append(
            f"baseline: {b.registered_model}@{b.alias} = version {b.version}, re-measured on this holdout"
            + (f"; {b.note}" if b.note else "")
        )
    r = report.registry
    if r is not None and r.version:
        if r.promoted:
            what = f"@{r.alias} moved to version {r.version}" + (
                f" (from version {r.alias_was})" if r.alias_was not in (None, "none") else ""
            )
        elif r.promotion == CHAMPION_MOVED:
            what = (
                f"@{r.alias} not moved (champion-moved): another gate moved it to version "
                f"{r.alias_was} after this one compared itself with version {r.compared_with}; "
                "re-run the job to compare with the new champion (exit 7)"
            )
        elif r.will_promote:
            what = f"@{r.alias} to move to version {r.version} once recorded"
        else:
            what = f"@{r.alias} not moved ({r.promotion})"
        out.append(f"registry: {r.registered_model} version {r.version} registered; {what}")
    return out


def policy_line(t: Tightened, source: str) -> str:
    """One threshold a PR's config tried to loosen, and the value the gate used."""
    said = "does not set it" if t.config is None else f"says {t.config:g}"
    return (
        f"policy: {t.threshold}: this build's config {said}, looser than the {t.policy:g} "
        f"recorded on {source}; the gate used {t.used:g} (a PR cannot loosen the gate that judges it)"
    )


def policy_lines(report: Report) -> list[str]:
    """The policy a PR build was held to, and each threshold its config tried to loosen."""
    g = report.gate
    if g.policy_source is None:
        return []
    if not g.tightened:
        return [f"policy: thresholds at least as strict as those recorded on {g.policy_source}"]
    return [policy_line(t, g.policy_source) for t in g.tightened]


def serving_line(report: Report, code: str = "") -> str:
    """Which runtime served the student, from which files (``ship.runtime``)."""
    s = report.serving
    assert s is not None
    files = ", ".join(f"{code}{Path(f).name}{code}" for f in s.files)
    int8 = "" if s.quantize == "none" else f" {s.quantize}"
    return (
        f"served by {s.runtime}{int8}: {files} ({s.file_bytes:,} bytes; the .ccz "
        f"{s.ccz_bytes:,} bytes; {s.threads} thread(s); teacher timed in torch fp32)"
    )


def verdict_line(report: Report) -> str:
    word = {"pass": "PASSED", "fail": "FAILED", "inconclusive": "INCONCLUSIVE"}.get(
        report.verdict, "PASSED" if report.passed else "FAILED"
    )
    d = report.deltas
    st = report.statistics
    if "delta.accuracy_drop_points" in d or not isinstance(st, PairedScoreStatistics):
        change = f"accuracy drop {d['delta.accuracy_drop_points']:.2f} points"
    else:
        change = f"{st.metric} {st.worse} {st.change:+.4g}"
    return (
        f"ci-compress gate {word}: {change}"
        f"{interval_text(report)}, "
        f"{d['delta.compression_ratio']:.2f}x smaller"
        + (f", latency x{d['delta.latency_ratio']:.2f}" if "delta.latency_ratio" in d else "")
    )


def terminal(report: Report) -> str:
    rows: list[tuple[str, ...]]
    if has_champion_column(report):
        rows = [
            ("metric", "original", champion_label(report), "candidate"),
            *table_rows_with_champion(report),
        ]
    else:
        rows = [("metric", "teacher", "student"), *table_rows(report)]
    n = len(rows[0])
    w = [max(len(r[i]) for r in rows) for i in range(n)]
    lines = [verdict_line(report), ""]
    for i, r in enumerate(rows):
        cells = [f"{r[0]:<{w[0]}}", *(f"{r[j]:>{w[j]}}" for j in range(1, n))]
        lines.append("  " + "  ".join(cells))
        if i == 0:
            lines.append("  " + "  ".join("-" * w[j] for j in range(n)))
    lines.append("")
    for c in report.gate.checks:
        if c.skipped:
            mark = "skip"
        else:
            mark = {"inconclusive": "??"}.get(c.outcome, "ok" if c.passed else "FAIL")
        lines.append(f"  [{mark}] {c.message}")
    for line in policy_lines(report):
        lines.append(f"  {line}")
    if statistics_line(report):
        lines.append(f"  {statistics_line(report)}")
    for line in baseline_lines(report):
        lines.append(f"  {line}")
    for warning in report.warnings:
        lines.append(f"  warning: {warning}")
    if report.passes:
        lines.append("")
        lines.append("  passes: " + " -> ".join(p.name for p in report.passes))
    if report.serving is not None:
        lines.append(f"  {serving_line(report)}")
    worst = report.per_class.worst.get("student") if report.per_class is not None else None
    if worst:
        lines.append(
            f"  worst class: {worst.label} (drop {worst.drop_points:.2f} points; per-class table in report.md)"
        )
    if report.explain:
        lines += ["", *("  " + line for line in terminal_table(dict(report.explain)).splitlines())]
    if report.trend and report.trend.get("rows"):
        lines.append(
            f"  trend: {report.trend['versions']} promoted version(s) in report.md; "
            + (drift_line(report.trend) or "no comparable metrics")
        )
    run = report.mlflow
    if run is not None and run.run_id:
        lines.append(f"  mlflow run: {run.run_id}" + (f" ({run.run_url})" if run.run_url else ""))
    if report.artifacts.report_json:
        lines.append(f"  report: {report.artifacts.report_json}")
    return "\n".join(lines)


def markdown(report: Report) -> str:
    icon = "❔" if report.verdict == "inconclusive" else ("✅" if report.passed else "❌")
    out = [f"## {icon} {verdict_line(report)}", ""]
    out += ["| threshold | measured | interval | limit | result |", "|---|---|---|---|---|"]
    for c in report.gate.checks:
        if c.skipped:
            out.append(f"| `{c.threshold}` | - | - | {c.limit:.4g} | skipped (no champion yet) |")
            continue
        interval = (
            f"[{c.ci_low:.4g}, {c.ci_high:.4g}]"
            if c.ci_low is not None and c.ci_high is not None
            else "-"
        )
        result = {"inconclusive": "**INCONCLUSIVE**"}.get(
            c.outcome, "pass" if c.passed else "**FAIL**"
        )
        out.append(
            f"| `{c.threshold}` | {c.measured:.4g} | {interval} | {c.limit:.4g} | {result} |"
        )
    out += policy_markdown(report)
    if statistics_line(report):
        out += ["", statistics_line(report) + "."]
    if has_champion_column(report):
        out += [
            "",
            f"| metric | original | {champion_label(report)} | candidate |",
            "|---|---:|---:|---:|",
        ]
        out += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in table_rows_with_champion(report)]
        out += [""] + [f"- {line}" for line in baseline_lines(report)]
    else:
        out += ["", "| metric | teacher | student |", "|---|---:|---:|"]
        out += [f"| {a} | {b} | {c} |" for a, b, c in table_rows(report)]
    if report.passes:
        out += ["", "**Passes:** " + " → ".join(f"`{p.name}`" for p in report.passes)]
    if report.serving is not None:
        out += ["", serving_line(report, code="`") + "."]
    for w in report.warnings:
        out += ["", f"> **Warning:** {w}"]
    out += per_class_markdown(report.per_class)
    if report.explain:
        out += ["", markdown_section(dict(report.explain))]
    if report.trend:
        out += trend_markdown(report.trend)
    h = report.holdout
    out += [
        "",
        f"Holdout: `{h.name}`, {h.samples} samples, sha256 `{h.sha256[:12]}`.",
    ]
    run = report.mlflow
    if run is not None and run.run_id:
        link = run.run_url
        out.append(
            f"MLflow run: {'[' + run.run_id + '](' + link + ')' if link else '`' + run.run_id + '`'}."
        )
    return "\n".join(out) + "\n"


def policy_markdown(report: Report) -> list[str]:
    """The thresholds a PR's config tried to loosen, as a table (nothing when none did)."""
    g = report.gate
    if g.policy_source is None:
        return []
    if not g.tightened:
        return [
            "",
            f"Policy: thresholds at least as strict as those recorded on {g.policy_source}.",
        ]
    out = [
        "",
        f"**Policy:** this PR's config tried to loosen the gate that judges it; the gate used "
        f"the thresholds recorded on {g.policy_source}.",
        "",
        "| threshold | this PR's config | policy | used |",
        "|---|---:|---:|---:|",
    ]
    for t in g.tightened:
        mine = "not set" if t.config is None else f"{t.config:g}"
        out.append(f"| `{t.threshold}` | {mine} | {t.policy:g} | **{t.used:g}** |")
    return out


def per_class_markdown(per_class: PerClass | None) -> list[str]:
    """The per-class accuracy table (one column per role, one drop column per compared role)."""
    if per_class is None or not per_class.classes:
        return []
    roles = per_class.roles
    ref = per_class.reference
    others = [r for r in roles if r != ref]
    head = ["class", "samples", *roles, *(f"drop {r} (points)" for r in others)]
    out = [
        "",
        "<details><summary>Per-class accuracy</summary>",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---:|" * len(head),
    ]
    for row in per_class.classes:
        cells = [row.label, str(row.samples)]
        cells += [f"{100 * row.accuracy[r]:.2f}%" for r in roles]
        flagged = row.label in per_class.flagged
        cells += [
            f"**{row.drop_points[r]:.2f}**"
            if flagged and r == "student"
            else f"{row.drop_points[r]:.2f}"
            for r in others
        ]
        out.append("| " + " | ".join(cells) + " |")
    out += ["", "</details>"]
    if per_class.flagged:
        out += [
            "",
            f"**Classes over `max_class_drop` ({per_class.max_class_drop:g} points):** "
            + ", ".join(f"`{label}`" for label in per_class.flagged),
        ]
    return out


def report_files(out_dir: Path, *, manifest: bool) -> dict[str, Path]:
    """Where :func:`write_reports` writes: report.json, report.md, junit.xml and, for a
    report with a reproducibility manifest, manifest.json (keys as in ``Artifacts``)."""
    paths = {
        "report_json": out_dir / "report.json",
        "report_md": out_dir / "report.md",
        "junit_xml": out_dir / "junit.xml",
    }
    if manifest:
        paths["manifest_json"] = out_dir / "manifest.json"
    return paths


def write_reports(report: Report, out_dir: Path) -> dict[str, Path]:
    """Write report.json, report.md, junit.xml and manifest.json (when recorded) into
    ``out_dir``; returns their paths. The report names these files in its ``artifacts``
    when the caller built it with :func:`report_files`."""

    paths = report_files(out_dir, manifest=bool(report.reproducibility))

    write_report_json(report, paths["report_json"])
    atomic_write(paths["report_md"], redact(markdown(report)))
    atomic_write(paths["junit_xml"], redact(junit_xml(report)))
    if report.reproducibility:
        atomic_write(paths["manifest_json"], strict_json(report.reproducibility))
    return paths


def write_report_json(report: Report, path: Path) -> Path:
    """Write ``report.json`` (atomically): the one writer, for the gate and tune's trials."""
    atomic_write(path, report_json(report))
    return path


def report_json(report: Report) -> str:
    """The text of ``report.json`` (also what ``ci-compress run --json`` prints)."""
    return strict_json(report.to_dict())


# How report.json writes a float that JSON has no number for (RFC 8259 allows none):
# as these strings, which Python's float() and JavaScript's Number() both read back.
NON_FINITE = {math.inf: "Infinity", -math.inf: "-Infinity"}
NAN = "NaN"


def strict_json(data: Any) -> str:
    """Redacted, strict JSON text of report data (report.json, manifest.json).

    Secrets are redacted string by string, so numbers and structure stay intact;
    interpolated config values are written as their ``${NAME}`` templates. Every
    float that is not finite (a ratio over a zero denominator) becomes the string
    ``"Infinity"``, ``"-Infinity"`` or ``"NaN"``: the text is always valid JSON
    (``json.loads(..., parse_constant=...)`` never sees a bare ``Infinity``).
    """
    return json.dumps(_finite(redact_data(data)), indent=2, sort_keys=True, allow_nan=False) + "\n"


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return NAN if math.isnan(value) else NON_FINITE[value]
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
