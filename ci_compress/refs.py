"""``package.module:function`` references: the form the config validates, and the import.

A reference names code the user trusts (a model or data factory, a student factory, a
custom metric): the config is code. The pattern is checked when the config is
validated; the import happens when the reference is used.

The config's own folder is importable: a ``factories.py`` beside ``compress.yaml`` is
found without ``PYTHONPATH``. The folder is put on ``sys.path`` only while the
reference is imported, and only when the module's top-level name exists there, so one
config's folder never shadows modules for another; a module of the same name that an
earlier config imported from another folder is imported afresh from this one.
"""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from ci_compress.errors import ConfigError

FACTORY_RE = r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$"
"""``package.module:function``: a dotted module path, a colon, a function name."""


def factory_pattern() -> re.Pattern[str]:
    return re.compile(FACTORY_RE)


def import_factory(target: str, *, path: str, base_dir: Path | None = None) -> Callable[..., Any]:
    """Import ``package.module:function`` (a trusted reference from the config).

    ``path`` is the config field that names it, for the error message; ``base_dir``
    (the config's folder) is searched first for the module (see the module docstring).
    """
    mod_name, _, fn_name = target.partition(":")
    try:
        module = _import(mod_name, base_dir)
    except ImportError as e:
        where = f" or in the config's folder {base_dir}" if base_dir is not None else ""
        raise ConfigError(
            f"cannot import {mod_name!r} ({e})",
            path=path,
            hint=f"check the module is installed, on PYTHONPATH{where}",
        ) from None
    except Exception as e:  # the module itself raised while being imported
        first = (str(e).splitlines() or [""])[0][:300]
        raise ConfigError(
            f"importing {mod_name!r} raised {type(e).__name__}: {first}",
            path=path,
            hint="fix the error in that module (it runs when the reference is imported)",
        ) from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise ConfigError(f"{mod_name!r} has no callable {fn_name!r}", path=path)
    return fn  # type: ignore[no-any-return]


def _import(mod_name: str, base_dir: Path | None) -> ModuleType:
    if base_dir is None:
        return importlib.import_module(mod_name)
    folder = Path(base_dir).resolve()
    top = mod_name.partition(".")[0]
    if not ((folder / f"{top}.py").is_file() or (folder / top).is_dir()):
        return importlib.import_module(mod_name)
    cached = sys.modules.get(top)
    if cached is not None and not _from(cached, folder):
        for name in [n for n in sys.modules if n == top or n.startswith(f"{top}.")]:
            del sys.modules[name]
    entry = str(folder)
    sys.path.insert(0, entry)
    try:
        importlib.invalidate_caches()
        return importlib.import_module(mod_name)
    finally:
        if entry in sys.path:
            sys.path.remove(entry)


def _from(module: ModuleType, folder: Path) -> bool:
    """Whether ``module`` was imported from ``folder``."""
    origin = getattr(module, "__file__", None)
    if origin is None:  # a namespace package
        paths = list(getattr(module, "__path__", []))
        return any(Path(p).resolve().parent == folder for p in paths)
    p = Path(origin).resolve()
    return (p.parent.parent if p.name == "__init__.py" else p.parent) == folder
