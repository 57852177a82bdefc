"""Keeping secrets out of every output: the one place that redacts.

Three kinds of secret reach ci-compress:

* URL userinfo (``https://user:password@host``) in ``model.url`` or
  ``mlflow.tracking_uri``: shown as ``https://***@host``;
* values interpolated into the config from the environment (``${NAME}``): shown as
  ``${NAME}``, so a reader still sees where the value came from
  (:func:`register` is called by the config loader for each one);
* MLflow's own credential variables (:data:`SECRET_ENV`): shown as ``***``.

Everything that leaves the process goes through :func:`redact` (text) or
:func:`redact_data` (JSON-like data): error messages and progress lines (``cli``),
report.json and report.md (``reporting.render``), MLflow params and tags
(``tracking``) and the config copy logged to MLflow (``pipeline``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

SECRET_ENV = (
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_CLIENT_CERT_AND_KEY",
)
# Shorter values are not treated as secrets: replacing "1" or "on" everywhere would
# mangle every number in a report and hide nothing worth hiding.
MIN_SECRET_LENGTH = 4
_USERINFO = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s'\"]+@")

_registered: dict[str, str] = {}


def register(value: str, shown: str = "***") -> None:
    """Treat ``value`` as a secret from now on; it is printed as ``shown``."""
    if len(value) >= MIN_SECRET_LENGTH:
        _registered[value] = shown


def clear() -> None:
    """Forget registered values (tests that load several configs in one process)."""
    _registered.clear()


def redact_url(url: str) -> str:
    """The URL with any ``user:password@`` part replaced by ``***@``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return _USERINFO.sub(r"\1***@", url)
    if not (parts.username or parts.password):
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"***@{host}"))


def redact(text: str, environ: Mapping[str, str] | None = None) -> str:
    """``text`` with URL userinfo, registered values and credential variables removed."""
    if not text:
        return text
    environ = os.environ if environ is None else environ
    text = _USERINFO.sub(r"\1***@", text)
    # Longest first, so a secret that contains another is replaced whole.
    for value in sorted(_registered, key=len, reverse=True):
        if value in text:
            text = text.replace(value, _registered[value])
    for var in SECRET_ENV:
        secret = environ.get(var)
        if secret and len(secret) >= MIN_SECRET_LENGTH:
            text = text.replace(secret, "***")
    return text


def redact_data(value: Any, environ: Mapping[str, str] | None = None) -> Any:
    """A copy of JSON-like data with every string (keys included) redacted."""
    if isinstance(value, str):
        return redact(value, environ)
    if isinstance(value, Mapping):
        return {redact_data(k, environ): redact_data(v, environ) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_data(v, environ) for v in value]
    return value
