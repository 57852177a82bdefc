"""ci-compress: a CI/CD gate for compressed models.

The library is the product; the CLI is an adapter. The entry point is
:func:`ci_compress.pipeline.run`, which takes a validated config and returns a
:class:`ci_compress.report.Report` without printing or exiting.
"""

from __future__ import annotations

__version__ = "0.1.0"
