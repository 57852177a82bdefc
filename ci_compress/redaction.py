"""Keeping secrets out of every output: the one place that redacts.

Three kinds of secret reach ci-compress:

* URL userinfo (``https://user:password@host``) in ``model.url`` or
  ``mlflow.tracking_uri``: shown as ``https://***@host`` (userinfo whose password is
  written as ``${NAME}`` references only is a template, and text keeps it);
* values interpolated into the config from the environment (``${NAME}``): shown as
  ``${NAME}``, so a reader still sees where the value came from;
* MLflow's own credential variables (:data:`SECRET_ENV`): shown as ``***``.

Interpolated values are a type, :class:`Interpolated`: a ``str`` holding the value
(what code that *uses* it gets: ``str()``, f-strings, ``repr()``, string methods, an
HTTP client) that also carries the template it came from
(``https://ci:${TOKEN}@host``). Every serialiser of ours writes the template:
config objects dump to it (:class:`ci_compress.frozen.Frozen`),
:func:`templated`/:func:`redact_data` map it for JSON, and the config's YAML dumper
represents it (a plain ``yaml.safe_dump`` refuses it rather than leak). So a writer
that goes through the config objects cannot write the value, whether or not it
remembers to redact.

Free text is the defence in depth: error messages, progress lines and logs go
through :func:`redact`, which still knows every interpolated value (:func:`register`,
called by the config loader) and replaces it with its ``${NAME}``. Everything that
leaves the process goes through :func:`redact` (text) or :func:`redact_data`
(JSON-like data): error messages and progress lines (``cli``), report.json,
report.md, junit.xml and manifest.json (``reporting.render``), MLflow params and tags
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
_USERINFO = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://)([^/@\s'\"]+)@")
# A credential written as references only (``https://ci:${TOKEN}@host``) is a template,
# not a secret: text keeps it, so a reader sees where the value comes from (and the
# config text in the reproducibility manifest stays the text that was read).
_REFERENCES_ONLY = re.compile(r"(?:\$\{[A-Za-z_][A-Za-z0-9_]*\})+")

_registered: dict[str, str] = {}


class Interpolated(str):
    """A config string built from ``${NAME}`` references: the value, plus its template.

    ``str(x)``, ``f"{x}"``, ``repr(x)`` and every string operation see the value (a
    tracking URI with credentials must reach MLflow whole); serialisers see
    :attr:`template`, which may mix literal text and several references
    (``https://${USER}:${TOKEN}@host/x``). The result of a string operation is a plain
    ``str``: derived text is no longer known to be a config value, so only
    :func:`redact` protects it.
    """

    __slots__ = ("template",)
    template: str

    def __new__(cls, value: str, template: str) -> Interpolated:
        self = super().__new__(cls, value)
        self.template = template
        return self

    def __reduce__(self) -> tuple[type[Interpolated], tuple[str, str]]:
        # Pickled for --jobs worker processes and deep-copied with configs: keep the template.
        return (Interpolated, (str.__str__(self), self.template))


def templated(value: Any) -> Any:
    """JSON-like data with every :class:`Interpolated` replaced by its template.

    Walks dicts (keys too), lists and tuples; anything else (numbers, config objects,
    which serialise themselves) is returned as is.
    """
    if isinstance(value, Interpolated):
        return value.template
    if isinstance(value, dict):
        return {templated(k): templated(v) for k, v in value.items()}
    if isinstance(value, list):
        return [templated(v) for v in value]
    if isinstance(value, tuple):
        return tuple(templated(v) for v in value)
    return value


def register(value: str, shown: str = "***") -> None:
    """Treat ``value`` as a secret from now on; it is printed as ``shown``."""
    if len(value) >= MIN_SECRET_LENGTH:
        _registered[value] = shown


def clear() -> None:
    """Forget registered values (tests that load several configs in one process)."""
    _registered.clear()


def redact_url(url: str) -> str:
    """The URL with any ``user:password@`` part replaced by ``***@``.

    An :class:`Interpolated` URL is shown from its template (a token in the query stays
    ``${NAME}``).
    """
    if isinstance(url, Interpolated):
        url = url.template
    try:
        parts = urlsplit(url)
    except ValueError:
        return _USERINFO.sub(r"\1***@", url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]))


def strip_userinfo(url: str) -> str:
    """The URL without its ``user:password@`` part (``https://host/repo.git``).

    For values that are recorded as facts rather than shown (the CI context: a Jenkins
    ``GIT_URL`` can carry the job's clone credentials): nothing of the credential stays,
    not even the user name.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return _USERINFO.sub(r"\1", url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def redact(text: str, environ: Mapping[str, str] | None = None) -> str:
    """``text`` with URL userinfo, registered values and credential variables removed.

    An :class:`Interpolated` value is shown as its template (then redacted like any text).
    """
    if isinstance(text, Interpolated):
        text = text.template
    if not text:
        return text
    environ = os.environ if environ is None else environ
    text = _USERINFO.sub(_hide_userinfo, text)
    # Longest first, so a secret that contains another is replaced whole.
    for value in sorted(_registered, key=len, reverse=True):
        if value in text:
            text = text.replace(value, _registered[value])
    for var in SECRET_ENV:
        secret = environ.get(var)
        if secret and len(secret) >= MIN_SECRET_LENGTH:
            text = text.replace(secret, "***")
    return text


def _hide_userinfo(m: re.Match[str]) -> str:
    user, _, password = m.group(2).partition(":")
    if _REFERENCES_ONLY.fullmatch(password or user):
        return m.group(0)
    return f"{m.group(1)}***@"


def redact_data(value: Any, environ: Mapping[str, str] | None = None) -> Any:
    """A copy of JSON-like data with every string (keys included) redacted
    (an :class:`Interpolated` one shown as its template)."""
    if isinstance(value, str):
        return redact(value, environ)
    if isinstance(value, Mapping):
        return {redact_data(k, environ): redact_data(v, environ) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_data(v, environ) for v in value]
    return value
