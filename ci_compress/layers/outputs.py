"""Outputs of any structure: the one adapter that picks the tensor the gate measures.

Models return a tensor, a tuple or list (``(logits, aux)``), a dict, or a Hugging Face
``ModelOutput`` (an ``OrderedDict`` subclass with attribute access, holding only the
fields that are set). :func:`select_output` turns any of them into one tensor:

* a tensor: as is, whatever ``model.output`` says (a distilled student may return
  the bare tensor its teacher wrapped);
* ``model.output`` unset: a mapping's ``logits`` when present, else its
  first tensor value; a sequence's first element;
* ``model.output: <key>`` (``logits``, ``last_hidden_state``): that entry of a mapping,
  or that attribute of a named tuple;
* ``model.output: <index>``: that element of a sequence, or the index-th value of a
  mapping.

When nothing fits, the error names what the model returned (its type and keys or
length), so the fix (the right ``model.output``) is one line. transformers is never
imported to recognise a ``ModelOutput``: it is a ``Mapping``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeAlias

from ci_compress.errors import ModelOutputError

if TYPE_CHECKING:
    import torch

OutputSpec: TypeAlias = "str | int | None"
"""``model.output``: a key, an index, or None for the default rule."""

DEFAULT_KEY = "logits"


def describe_output(out: Any) -> str:
    """What a model returned, for messages: type and keys, length or shape."""
    import torch

    if isinstance(out, torch.Tensor):
        return f"a tensor of shape {tuple(out.shape)}"
    name = type(out).__name__
    if isinstance(out, Mapping):
        return f"a {name} with keys {', '.join(map(str, out.keys())) or '(none)'}"
    if hasattr(out, "_fields"):  # a named tuple
        return f"a {name} with fields {', '.join(out._fields)}"
    if isinstance(out, tuple | list):
        kinds = ", ".join(
            f"tensor {tuple(v.shape)}" if isinstance(v, torch.Tensor) else type(v).__name__
            for v in out[:6]
        )
        more = ", ..." if len(out) > 6 else ""
        return f"a {name} of {len(out)} ({kinds}{more})"
    return f"a {name}"


def select_output(out: Any, spec: OutputSpec = None, *, role: str = "the") -> torch.Tensor:
    """The tensor of ``out`` that ``spec`` names (see the module docstring).

    ``role`` names the model in errors (``teacher``, ``student``).
    """
    import torch

    if isinstance(out, torch.Tensor):
        return out
    picked: Any
    if spec is None:
        if isinstance(out, Mapping):
            if out.get(DEFAULT_KEY) is not None:
                picked = out[DEFAULT_KEY]
            else:
                picked = next((v for v in out.values() if isinstance(v, torch.Tensor)), None)
        elif isinstance(out, tuple | list) and out:
            picked = out[0]
        else:
            picked = None
        if not isinstance(picked, torch.Tensor):
            raise ModelOutputError(
                f"the {role} model returned {describe_output(out)}: no tensor to measure",
                hint="set model.output to the key or index of the tensor to measure",
            )
        return picked
    picked = _pick(out, spec)
    if picked is _MISSING:
        raise ModelOutputError(
            f"model.output {spec!r} is not in what the {role} model returned: {describe_output(out)}",
            hint="set model.output to one of those keys, or to an index",
        )
    if not isinstance(picked, torch.Tensor):
        raise ModelOutputError(
            f"model.output {spec!r} of the {role} model is a {type(picked).__name__}, not a tensor "
            f"(the model returned {describe_output(out)})",
            hint="point model.output at a tensor",
        )
    return picked


_MISSING = object()


def _pick(out: Any, spec: str | int) -> Any:
    if isinstance(spec, str):
        if isinstance(out, Mapping):
            return out.get(spec, _MISSING)
        if hasattr(out, "_fields") and spec in out._fields:
            return getattr(out, spec)
        return _MISSING
    if isinstance(out, Mapping):
        values = list(out.values())
        return values[spec] if -len(values) <= spec < len(values) else _MISSING
    if isinstance(out, tuple | list):
        return out[spec] if -len(out) <= spec < len(out) else _MISSING
    return _MISSING
