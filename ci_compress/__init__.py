"""ci-compress: a CI/CD gate for compressed models.

The library is the product; the CLI is an adapter. The public API, imported lazily so
that ``import ci_compress`` (and ``ci-compress --help``) costs nothing::

    from ci_compress import load_config, run

    report = run(load_config("compress.yaml"))
    print(report.passed, report.deltas["delta.accuracy_drop_points"])

* :func:`run` (:func:`ci_compress.pipeline.run`): the whole gate, MLflow included;
  returns a :class:`Report` and never prints or exits;
* :func:`evaluate` (:func:`ci_compress.pipeline.evaluate`): compress, pack, reload,
  evaluate and gate one config, without MLflow or report files;
* :func:`load_student` (:func:`ci_compress.packing.file.load_student`): the shipped
  ``.ccz`` as a model, for the code that serves it;
* :func:`load_config`, :class:`Report`, :class:`CICompressError` (the root of every
  error, each with its ``exit_code``), :class:`ExitCode`, ``__version__``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_PUBLIC = {
    "run": "ci_compress.pipeline",
    "evaluate": "ci_compress.pipeline",
    "load_config": "ci_compress.config",
    "Report": "ci_compress.report",
    "CICompressError": "ci_compress.errors",
    "ExitCode": "ci_compress.errors",
    "load_student": "ci_compress.packing.file",
}
__all__ = [
    "CICompressError",
    "ExitCode",
    "Report",
    "__version__",
    "evaluate",
    "load_config",
    "load_student",
    "run",
]

if TYPE_CHECKING:
    from ci_compress.config import load_config
    from ci_compress.errors import CICompressError, ExitCode
    from ci_compress.packing.file import load_student
    from ci_compress.pipeline import evaluate, run
    from ci_compress.report import Report


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'ci_compress' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
