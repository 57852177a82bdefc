"""Jenkins: a one-line build description and the exit code the shared-library step maps.

Renders a :class:`~ci_compress.report.Report`; decides nothing. The JUnit file (for the
``junit`` step) and report.md/report.json (for ``archiveArtifacts``) are written by
``ci-compress run``. The step ``vars/ciCompress.groovy`` maps this command's exit code:
0 -> success, 6 (warn, with ``--fail-on warn``) -> ``unstable``, 1 -> ``error``.
"""

from __future__ import annotations

import html
from pathlib import Path

from ci_compress.ci.common import Echo, conclude, echo_findings
from ci_compress.files import atomic_write
from ci_compress.report import Report
from ci_compress.reporting.render import verdict_line


def description(report: Report) -> str:
    """Short HTML-safe text for ``currentBuild.description``."""

    return html.escape(verdict_line(report))


def publish(
    report: Report,
    *,
    fail_on: str = "fail",
    description_file: Path | None = None,
    echo: Echo = print,
) -> int:
    if description_file is not None:
        atomic_write(description_file, description(report) + "\n")
    echo_findings(report, echo)
    return conclude(report, fail_on, echo)
