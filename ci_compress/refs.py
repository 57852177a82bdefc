"""``package.module:function`` references: the form the config validates, and the import.

A reference names code the user trusts (a model or data factory, a student factory):
the config is code. The pattern is checked when the config is validated; the import
happens when the reference is used.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from typing import Any

from ci_compress.errors import ConfigError

FACTORY_RE = r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$"
"""``package.module:function``: a dotted module path, a colon, a function name."""


def factory_pattern() -> re.Pattern[str]:
    return re.compile(FACTORY_RE)


def import_factory(target: str, *, path: str) -> Callable[..., Any]:
    """Import ``package.module:function`` (a trusted reference from the config).

    ``path`` is the config field that names it, for the error message.
    """
    mod_name, _, fn_name = target.partition(":")
    try:
        module = importlib.import_module(mod_name)
    except ImportError as e:
        raise ConfigError(
            f"cannot import {mod_name!r} ({e})",
            path=path,
            hint="check the module is installed or on PYTHONPATH",
        ) from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise ConfigError(f"{mod_name!r} has no callable {fn_name!r}", path=path)
    return fn  # type: ignore[no-any-return]
