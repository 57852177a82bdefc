"""The pass contract: its config base, context, record and module shape; the matcher.

A pass is a module exposing ``Config`` (a :class:`PassConfig` subclass with a ``type``
literal) and ``apply(model, config, ctx) -> PassRecord``, listed once in
:mod:`ci_compress.passes.registry`. Passes change the student in place; the pipeline
gives them a copy of the teacher. This module stays light (no torch at import): the
config loader imports it to validate pass sections.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import Field

from ci_compress.errors import ConfigError
from ci_compress.frozen import Frozen

if TYPE_CHECKING:
    import torch
    from torch import nn


class PassConfig(Frozen):
    """Fields shared by every pass: which modules it touches."""

    type: str = Field(description="Pass name, one of the registered passes.")
    include: tuple[str, ...] = Field(
        ("*",),
        description="Modules to touch: exact qualified names, shell globs, or 're:' regular expressions.",
    )
    exclude: tuple[str, ...] = Field(
        (), description="Modules to leave alone (same forms as include); exclude wins."
    )

    def needs_data(self) -> tuple[tuple[str, str], ...]:
        """The data sections this pass, as configured, reads: ``(field, why)`` pairs.

        ``ci-compress validate`` and the start of every run check them against the
        config's ``data`` section before a model is loaded; the pass raises the same
        error (:func:`ci_compress.passes.training.require`) when called directly.
        """
        return ()

    def factories(self) -> dict[str, str]:
        """``package.module:function`` references this pass imports, by field name
        (checked for importability before a model is loaded)."""
        return {}


@dataclass
class PassContext:
    """What a pass may use besides the model: seed, data, where it sits in the list."""

    seed: int
    index: int
    train_data: Callable[[], Iterable[tuple[Any, torch.Tensor | None]]] | None = None
    calibration_data: Callable[[], Iterable[tuple[Any, torch.Tensor | None]]] | None = None
    teacher: nn.Module | None = None
    step: Callable[[str, int, int | None], None] | None = None
    """Progress of a long pass: ``step(task, done, total)`` (e.g. training steps); may be None."""
    output: str | int | None = None
    """``model.output``: which part of a structured model output is the logits."""
    device: str = "cpu"
    """Where passes that train run (``runtime.device``, resolved: ``cpu`` or ``cuda``)."""
    base_dir: Path | None = None
    """The config's folder: importable for factory references (``student_factory``)."""
    pool: Callable[[torch.Tensor, Any], torch.Tensor] | None = None
    """An embedding task's own pooling, ``pool(outputs, inputs)``: the embeddings the gate
    compares (``task.pooling``); None for every other task. ``distill`` adds their cosine
    (or MSE) to its label-free loss."""
    mask: str | None = None
    """An embedding task's ``task.mask``: the input whose zeros are padding. The per-token
    losses of ``distill`` leave those positions out; None: every position counts."""

    def fit_options(self) -> dict[str, Any]:
        """The context's part of :func:`ci_compress.passes.training.fit`'s arguments."""
        return {"output": self.output, "device": self.device}


@dataclass
class PassRecord:
    """What a pass did, for the report and MLflow."""

    name: str
    index: int
    options: dict[str, Any]
    params_before: int = 0
    params_after: int = 0
    nonzero_before: int = 0
    nonzero_after: int = 0
    seconds: float = 0.0
    modules: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    # A pass that builds a new model (distill) puts it here; the caller must use it in
    # place of the model it passed in. Not part of the record's dict.
    replacement: nn.Module | None = None
    # Things the user should know (e.g. tied weights untied): the gate shows each as a
    # warning; the details hold them for the report too.
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "index": self.index,
            "options": self.options,
            "params_before": self.params_before,
            "params_after": self.params_after,
            "nonzero_before": self.nonzero_before,
            "nonzero_after": self.nonzero_after,
            "seconds": round(self.seconds, 4),
            "modules": self.modules,
            "details": self.details,
        }


class PassModule(Protocol):
    """The shape of a pass module, checked by mypy for every entry of PASSES."""

    @property
    def Config(self) -> type[PassConfig]: ...  # read-only: each module binds its own subclass

    def apply(self, model: nn.Module, config: Any, ctx: PassContext) -> PassRecord: ...


# ---------------------------------------------------------------- module selection


def _matches(name: str, pattern: str) -> bool:
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    if any(c in pattern for c in "*?["):
        return fnmatch.fnmatchcase(name, pattern)
    return name == pattern


def select(
    model: nn.Module,
    include: Iterable[str],
    exclude: Iterable[str],
    kinds: tuple[type[nn.Module], ...],
    *,
    path: str,
    refuse: Callable[[nn.Module], str | None] | None = None,
) -> list[tuple[str, nn.Module]]:
    """Modules of the given kinds whose qualified name matches include and not exclude.

    Patterns are exact names, shell globs (``features.*``) or ``re:`` regexes. A pattern
    in ``include`` that names no module of a suitable kind is a config error: a typo
    must not silently leave a layer uncompressed. ``refuse(module)`` says why the pass
    cannot handle a module of a suitable kind (``None``: it can): such a module named by
    an include pattern other than the default ``*`` is an error too; under ``*`` alone it
    is left as it is. Every problem is found before one :class:`ConfigError` lists them
    all (module, type, what to do), so a config is fixed in one try, not one per run.

    When ``kinds`` has ``nn.Linear``, the Hugging Face ``Conv1D`` layers the patterns
    select (GPT-2's blocks) are first replaced in ``model`` by the equal ``nn.Linear``
    (:func:`conv1d_to_linear`), so every pass that handles Linear layers handles them.
    """
    from torch import nn

    include, exclude = list(include), list(exclude)
    for pattern in include:
        if pattern.startswith("re:"):
            try:
                re.compile(pattern[3:])
            except re.error as e:
                raise ConfigError(
                    f"bad regular expression {pattern!r}: {e}", path=f"{path}.include"
                ) from None
    if any(issubclass(nn.Linear, k) for k in kinds):
        conv1d_to_linear(model, include, exclude)
    kind_names = "/".join(k.__name__ for k in kinds)
    named = [(n, m) for n, m in model.named_modules() if n]
    candidates = [(n, m) for n, m in named if isinstance(m, kinds)]
    chosen = [
        (n, m)
        for n, m in candidates
        if any(_matches(n, p) for p in include) and not any(_matches(n, p) for p in exclude)
    ]
    problems: list[str] = []
    for pattern in include:
        if pattern != "*" and not any(_matches(n, pattern) for n, _ in candidates):
            others = [f"{n} ({type(m).__name__})" for n, m in named if _matches(n, pattern)]
            problems.append(
                f"pattern {pattern!r} matches no {kind_names} module"
                + (
                    f" (it matches {_few(others)}, which this pass does not handle)"
                    if others
                    else ""
                )
            )
    kept = []
    for n, m in chosen:
        why = refuse(m) if refuse is not None else None
        if why is None:
            kept.append((n, m))
        elif any(p != "*" and _matches(n, p) for p in include):
            problems.append(f"{n} ({type(m).__name__}) {why}")
    if problems:
        names = ", ".join(n for n, m in candidates if refuse is None or refuse(m) is None)
        raise ConfigError(
            "; ".join(problems),
            path=f"{path}.include",
            hint="change include/exclude so it names only modules this pass can touch: "
            + (names or "none"),
        )
    return kept


def _few(items: list[str], n: int = 5) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def refuse_embedding(module: nn.Module) -> str | None:
    """Why an ``nn.Embedding`` cannot be compressed (``None`` when it can, or when the
    module is not an embedding)."""
    from torch import nn

    if not isinstance(module, nn.Embedding):
        return None
    if module.max_norm is not None:
        return (
            "has max_norm set: it renormalises table rows on every lookup, which a "
            "compressed table cannot do; exclude it, or build it with max_norm=None"
        )
    if type(module).forward is not nn.Embedding.forward:
        return (
            "subclasses nn.Embedding with its own forward, which a compressed table would "
            "drop (e.g. a scaled lookup); exclude it"
        )
    return None


def tied_weights(model: nn.Module, chosen: list[tuple[str, nn.Module]]) -> dict[str, list[str]]:
    """For each chosen module whose ``weight`` is the same tensor as another module's
    (tied weights, e.g. a language model's input embedding and output layer): the
    names of the modules sharing it. Replacing one side unties them."""
    owners: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        w = module._parameters.get("weight")
        if w is not None:
            owners.setdefault(id(w), []).append(name)
    out: dict[str, list[str]] = {}
    for name, module in chosen:
        w = module._parameters.get("weight")
        others = [o for o in owners.get(id(w), []) if o != name] if w is not None else []
        if others:
            out[name] = sorted(set(others))
    return out


def untie_notes(ties: dict[str, list[str]], chosen: Iterable[str], what: str) -> list[str]:
    """The warnings saying which tied weights a pass untied (one per group of modules)."""
    picked = set(chosen)
    notes, seen = [], set()
    for name, others in sorted(ties.items()):
        group = tuple(sorted({name, *others}))
        if group in seen:
            continue
        seen.add(group)
        done = [g for g in group if g in picked]
        left = [g for g in group if g not in picked]
        notes.append(
            f"{' and '.join(group)} shared one weight tensor (tied weights); this pass "
            + (
                f"{what} {', '.join(done)} only, {', '.join(left)} keeps the float copy"
                if left
                else f"{what} each separately"
            )
            + ": they are no longer tied and the shipped file stores each"
        )
    return notes


def set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def conv1d_to_linear(
    model: nn.Module, include: Iterable[str] = ("*",), exclude: Iterable[str] = ()
) -> list[str]:
    """Replace each Hugging Face ``Conv1D`` (GPT-2's Linear with a transposed weight)
    whose name matches ``include`` and not ``exclude`` by the equal ``nn.Linear`` (same
    outputs), so the passes that handle Linear layers handle it. Returns the names."""
    import torch
    from torch import nn

    include, exclude = list(include), list(exclude)
    converted = []
    for name, m in list(model.named_modules()):
        if type(m).__name__ != "Conv1D" or not type(m).__module__.startswith("transformers"):
            continue
        if not any(_matches(name, p) for p in include) or any(_matches(name, p) for p in exclude):
            continue
        weight, bias = getattr(m, "weight", None), getattr(m, "bias", None)
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
            continue
        fan_in, fan_out = weight.shape
        linear = nn.Linear(fan_in, fan_out, bias=bias is not None)
        with torch.no_grad():
            linear.weight.copy_(weight.T)
            if bias is not None:
                linear.bias.copy_(bias)
        linear.train(m.training)
        set_submodule(model, name, linear)
        converted.append(name)
    return converted
