"""Jenkins: a one-line build description and the exit code the shared-library step maps.

Renders a :class:`~ci_compress.report.Report`; decides nothing. The JUnit file (for the
``junit`` step) and report.md/report.json (for ``archiveArtifacts``) are written by
``ci-compress run``. The step ``vars/ciCompress.groovy`` maps this command's exit code:
0 -> success, 6 (warn, with ``--fail-on warn``) -> ``unstable``, 1 -> ``error``,
5 (inconclusive) -> ``error`` with its own message.

The description links the archived report.md when the step passes its URL
(``$BUILD_URL/artifact/<reportDir>/report.md``); Jenkins shows the description as HTML
through its markup formatter ("Safe HTML" keeps ``<a href>``).
"""

from __future__ import annotations

import html
from pathlib import Path

from ci_compress.ci.common import Echo, conclude, echo_findings
from ci_compress.files import atomic_write
from ci_compress.report import Report
from ci_compress.reporting.render import verdict_line


def description(report: Report, report_url: str | None = None) -> str:
    """Short HTML-safe text for ``currentBuild.description``, with a link to report.md."""

    text = html.escape(verdict_line(report))
    if report_url and report_url.startswith(("https://", "http://")):
        text += f' (<a href="{html.escape(report_url, quote=True)}">report.md</a>)'
    return text


def publish(
    report: Report,
    *,
    fail_on: str = "fail",
    description_file: Path | None = None,
    report_url: str | None = None,
    echo: Echo = print,
) -> int:
    if description_file is not None:
        atomic_write(description_file, description(report, report_url) + "\n")
    echo_findings(report, echo)
    return conclude(report, fail_on, echo)
