"""A model's stack of repeated blocks: find it, keep some of its blocks, hook their outputs.

The stack is found generically: the ``nn.ModuleList`` holding the most children of one
class (a BertModel's ``encoder.layer``, GPT-2's ``h``, a ViT's ``encoder.layer``). Two
lists tied for the most (an encoder-decoder's two stacks) or none with two blocks of
one class is a ConfigError naming the field, so that ``distill layers:`` never guesses.

Keeping blocks (:func:`keep_blocks_`) replaces the list by the kept blocks, weights and
all, and keeps a Hugging Face model consistent with its new depth: the config's layer
count (``num_hidden_layers``, ``n_layer``, ``num_layers``) and per-layer lists
(``layer_types``), and each kept block's ``layer_idx`` (the key of its key/value cache),
renumbered from 0.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ci_compress.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from torch import nn

# the attributes of a Hugging Face config that count the layers
LAYER_COUNTS = ("num_hidden_layers", "n_layer", "num_layers")


def find_blocks(model: nn.Module, field: str) -> tuple[str, nn.ModuleList]:
    """The qualified name and the ``nn.ModuleList`` of the model's repeated blocks."""
    from torch import nn

    best: list[tuple[str, nn.ModuleList, int, str]] = []
    top = 1
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) < 2:
            continue
        cls, count = Counter(type(m).__name__ for m in module).most_common(1)[0]
        if count > top:
            best, top = [(name, module, count, cls)], count
        elif count == top:
            best.append((name, module, count, cls))
    if not best:
        raise ConfigError(
            f"{type(model).__name__} has no stack of repeated blocks (an nn.ModuleList of "
            "two or more modules of one class) to keep layers of",
            path=field,
            hint="give student_factory (a function returning the student) or width instead",
        )
    if len(best) > 1:
        listed = ", ".join(f"{n or '<root>'} ({c} {k})" for n, _, c, k in best)
        raise ConfigError(
            f"{type(model).__name__} has several stacks of blocks of the same depth: "
            f"{listed}; which one to keep layers of is ambiguous",
            path=field,
            hint="give student_factory (a function returning the student) instead",
        )
    return best[0][0], best[0][1]


def check_layers(
    layers: Sequence[int], depth: int, where: str, field: str, *, allow_all: bool = False
) -> None:
    """Indices within the stack's depth (sortedness and duplicates are config checks)."""
    bad = [i for i in layers if i >= depth]
    if bad:
        raise ConfigError(
            f"{field} holds {bad[0]}, but {where} has {depth} blocks (indices 0 to {depth - 1})",
            path=field,
            hint=f"keep indices below {depth}",
        )
    if len(layers) == depth and not allow_all:
        raise ConfigError(
            f"{field} keeps all {depth} blocks of {where}: the student would be the teacher",
            path=field,
            hint="drop at least one block",
        )


def keep_blocks_(
    model: nn.Module, layers: Sequence[int], field: str, *, allow_all: bool = False
) -> dict[str, Any]:
    """Keep only the blocks ``layers`` (sorted, unique) of the model's stack, in place
    (``allow_all``: keeping every block is not an error, another change follows).

    Returns what changed, for the pass record: the stack's name, its depth before and
    after, and the config attributes updated.
    """
    from torch import nn

    name, stack = find_blocks(model, field)
    if not name:
        raise ConfigError(
            f"the model is itself the list of blocks ({type(model).__name__})",
            path=field,
            hint="give student_factory instead",
        )
    depth = len(stack)
    check_layers(layers, depth, name, field, allow_all=allow_all)
    kept = nn.ModuleList(stack[i] for i in layers)
    for new, (old, block) in enumerate(zip(layers, kept, strict=True)):
        for sub in block.modules():
            if getattr(sub, "layer_idx", None) == old:
                setattr(sub, "layer_idx", new)  # noqa: B010  # the key/value cache slot of this block
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, kept)
    updated = _update_config(model, layers, depth)
    return {"stack": name, "blocks_before": depth, "blocks_after": len(layers), "config": updated}


def _update_config(model: nn.Module, layers: Sequence[int], depth: int) -> list[str]:
    """Every config (of the model and its submodules) that counts ``depth`` layers now
    counts the kept ones; per-layer lists keep the kept entries."""
    updated: list[str] = []
    seen: set[int] = set()
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is None or id(config) in seen:
            continue
        seen.add(id(config))
        for attr in LAYER_COUNTS:
            if getattr(config, attr, None) == depth:
                try:
                    setattr(config, attr, len(layers))
                except (AttributeError, TypeError):
                    continue
                updated.append(attr)
        per_layer = getattr(config, "layer_types", None)
        if isinstance(per_layer, list) and len(per_layer) == depth:
            config.layer_types = [per_layer[i] for i in layers]
            updated.append("layer_types")
    return sorted(set(updated))


def hidden_state(output: Any) -> torch.Tensor:
    """A block's output hidden state: the tensor itself, or the first of a tuple
    (Hugging Face blocks return ``(hidden_states, attentions, ...)``)."""
    import torch

    while isinstance(output, (tuple, list)) and output:
        output = output[0]
    if not isinstance(output, torch.Tensor):
        raise ConfigError(
            f"a block returns {type(output).__name__}, not a tensor or a tuple starting with one",
            hint="turn the hidden option off",
        )
    return output


class BlockOutputs:
    """Forward hooks that record the output hidden state of chosen blocks, in order.

    ``with BlockOutputs(stack, [3, 4, 5]) as hooked:`` then ``hooked.take()`` after each
    forward returns the recorded tensors (and clears them).
    """

    def __init__(self, stack: nn.ModuleList, indices: Sequence[int]) -> None:
        self.stack = stack
        self.indices = list(indices)
        self.seen: dict[int, torch.Tensor] = {}
        self.handles: list[Any] = []

    def __enter__(self) -> BlockOutputs:
        for i in self.indices:
            self.handles.append(self.stack[i].register_forward_hook(self._hook(i)))
        return self

    def _hook(self, i: int) -> Any:
        def record(module: nn.Module, args: Any, output: Any) -> None:
            self.seen[i] = hidden_state(output)

        return record

    def take(self) -> list[torch.Tensor]:
        missing = [i for i in self.indices if i not in self.seen]
        if missing:
            raise ConfigError(
                f"block {missing[0]} of the stack did not run in the model's forward",
                hint="turn the hidden option off",
            )
        out = [self.seen[i] for i in self.indices]
        self.seen.clear()
        return out

    def __exit__(self, *exc: object) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()
        self.seen.clear()
