"""JUnit XML: one test case per threshold, so every CI shows the gate in its test view.

Jenkins (``junit``), GitLab (``artifacts:reports:junit``) and GitHub test-report actions
read this format. A failed threshold is a ``<failure>`` whose message carries the
measured value and the limit; the teacher/student figures go in ``<properties>``.
Renders a :class:`~ci_compress.report.Report`; decides nothing.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from ci_compress.report import Report

SUITE = "ci-compress"
CLASSNAME = "ci-compress.gate"


def junit_xml(report: Report) -> str:
    """The report as a JUnit XML document (``<testsuites>`` with one ``<testsuite>``)."""
    checks = report.gate.checks
    failures = sum(1 for c in checks if not c.passed)
    root = ET.Element(
        "testsuites", name=SUITE, tests=str(len(checks)), failures=str(failures), errors="0"
    )
    suite = ET.SubElement(
        root,
        "testsuite",
        name=SUITE,
        tests=str(len(checks)),
        failures=str(failures),
        errors="0",
        skipped="0",
        time="0",
    )
    props = ET.SubElement(suite, "properties")
    ET.SubElement(props, "property", name="verdict", value=report.verdict)
    for name, value in sorted(report.metrics().items()):
        ET.SubElement(props, "property", name=name, value=f"{value:.6g}")
    if report.mlflow is not None and report.mlflow.run_id:
        ET.SubElement(props, "property", name="mlflow.run_id", value=report.mlflow.run_id)
    for c in checks:
        case = ET.SubElement(suite, "testcase", classname=CLASSNAME, name=c.threshold, time="0")
        if not c.passed:
            failure = ET.SubElement(
                case,
                "failure",
                type="ThresholdExceeded",
                message=f"{c.metric} measured {c.measured:.6g}, limit {c.limit:.6g}",
            )
            failure.text = c.message
        else:
            out = ET.SubElement(case, "system-out")
            out.text = c.message
    if report.warnings:
        err = ET.SubElement(suite, "system-err")
        err.text = "\n".join(f"warning: {w}" for w in report.warnings)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
