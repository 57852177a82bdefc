"""The learned tensors of any model, decoded to float: what counting and sparsity see.

A compressed layer stores its weight in another form (int8 values and scales, cluster
indices and a codebook, two low-rank factors); counting must see the weight the layer
computes with, so each layer type says how to decode it.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from ci_compress.layers import modules
from ci_compress.layers.int8 import dynamic_linear_class, dynamic_linear_learned

_OURS = frozenset(modules.CLASSES.values())


def learned_tensors(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The module's own (non-recursive) learned weights as float tensors."""
    cls = type(module)
    if cls in _OURS:
        return module.learned()  # type: ignore[operator,no-any-return]
    if cls is dynamic_linear_class():
        return dynamic_linear_learned(module)
    return [(n, p.detach()) for n, p in module._parameters.items() if p is not None]


def weight_tensors(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Every learned tensor as a float view, including the weights of quantized modules."""
    for mod_name, module in model.named_modules():
        for t_name, tensor in learned_tensors(module):
            yield (f"{mod_name}.{t_name}" if mod_name else t_name), tensor


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(parameters, nonzero parameters), counting quantized and factorized weights too."""
    total = nonzero = 0
    for _, t in weight_tensors(model):
        total += t.numel()
        nonzero += int((t != 0).sum().item())
    return total, nonzero
