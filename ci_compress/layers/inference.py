"""The one way the gate runs models for measurement: ``inference()``.

``torch.inference_mode()``, plus one accommodation. torch.ao's static int8 kernels
resize their quantized output with ``quantized_resize_cpu_``, which torch flags as having
no deterministic implementation (with deterministic algorithms on, a resized tensor's
new memory is not filled). With ``warn_only=True`` that is a C++ warning on *every*
call: hundreds of lines in a CI log for one gate. The kernel then writes every output
element, so nothing uninitialised is read; ``tests/e2e/test_determinism.py`` runs the
static int8 gate repeatedly and checks the reports are identical. So while a model
holding torch.ao quantized modules runs, deterministic-algorithm alerts are switched
off and restored afterwards; for every other model nothing changes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import nn

_QUANTIZED_PREFIX = "torch.ao.nn.quantized"


def has_torch_ao_quantized(models: Iterable[nn.Module]) -> bool:
    """Whether any model runs torch.ao's quantized int8 kernels: its own quantized
    modules, or ours that call them (``uses_torch_ao_kernels``, a class attribute of the
    static int8 layers).

    Read from each module's class: ``getattr`` on the module goes through
    ``Module.__getattr__``, which raises and catches an AttributeError for every module
    that lacks the flag, half the cost of a check every evaluation pays."""
    return any(
        type(m).__module__.startswith(_QUANTIZED_PREFIX)
        or getattr(type(m), "uses_torch_ao_kernels", False)
        for model in models
        for m in model.modules()
    )


@contextlib.contextmanager
def inference(models: Iterable[nn.Module]) -> Iterator[None]:
    """``torch.inference_mode()``; for torch.ao quantized models, without the per-call
    non-determinism alerts (see the module docstring)."""
    import torch

    quiet = torch.are_deterministic_algorithms_enabled() and has_torch_ao_quantized(models)
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    # torch._C's setter: the public torch.use_deterministic_algorithms also imports
    # torch._inductor (seconds of start-up) only to set the compiler's flag.
    setter = torch._C._set_deterministic_algorithms
    with torch.inference_mode():
        if quiet:
            setter(False)
        try:
            yield
        finally:
            if quiet:
                setter(True, warn_only=warn_only)


def placement(model: nn.Module, device: torch.device) -> torch.device:
    """Where ``model`` runs for measurement: ``device``, except the CPU for a model that
    holds torch.ao int8 modules (their kernels exist for the CPU only)."""
    import torch

    if device.type != "cpu" and has_torch_ao_quantized([model]):
        return torch.device("cpu")
    return device


@contextlib.contextmanager
def placed(
    models: Mapping[str, nn.Module], device: torch.device
) -> Iterator[dict[str, torch.device]]:
    """Each model on its :func:`placement` for the block, back on the CPU afterwards
    (the packed file, exports and the next stage expect CPU models)."""
    where = {role: placement(m, device) for role, m in models.items()}
    moved = [(m, where[role]) for role, m in models.items() if where[role].type != "cpu"]
    for m, d in moved:
        m.to(d)
    try:
        yield where
    finally:
        for m, _ in moved:
            m.to("cpu")


@contextlib.contextmanager
def no_cache(model: nn.Module) -> Iterator[None]:
    """Run a Hugging Face model without its key/value cache (``config.use_cache``).

    A whole-sequence forward needs no cache; with one, the model returns a cache object
    (not tensors) and concatenates into it, which graph tracing and ``torch.export``
    cannot take. Models without the setting are run as they are.
    """
    config = getattr(model, "config", None)
    cached = getattr(config, "use_cache", None)
    if not isinstance(cached, bool) or not cached:
        yield
        return
    config.use_cache = False  # type: ignore[union-attr]
    try:
        yield
    finally:
        config.use_cache = cached  # type: ignore[union-attr]
