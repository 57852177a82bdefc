"""Quantization of Linear layers.

``int8-dynamic``: int8 weights (symmetric, per output channel) with activations
quantized on the fly, through ``torch.ao.nn.quantized.dynamic.Linear``. torch.ao is
deprecated in torch 2.13, but on CPU it is the only int8 Linear with fast kernels
without ``torch.compile`` (torchao's dynamic-activation int8 config ran 25x slower here,
see README "Why these libraries"); when torchao gains a fast eager CPU path this pass
switches to it without changing its config. Weights shrink 4x; biases stay fp32.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from ci_compress.config import PassConfig
from ci_compress.passes.base import PassContext, PassRecord, select, set_submodule

if TYPE_CHECKING:
    from torch import nn

TYPE = "quantize"


class QuantizeConfig(PassConfig):
    """Quantize Linear layers."""

    type: Literal["quantize"] = "quantize"
    scheme: Literal["int8-dynamic"] = Field(
        "int8-dynamic",
        description="int8-dynamic: int8 weights, activations quantized per batch (fast CPU kernels).",
    )


Config = QuantizeConfig


def apply(model: nn.Module, config: QuantizeConfig, ctx: PassContext) -> PassRecord:
    from torch import nn

    from ci_compress.artifacts.layers import int8_dynamic_linear, quantize_weight_int8

    chosen = select(
        model, config.include, config.exclude, (nn.Linear,), path=f"passes[{ctx.index}]"
    )
    for name, module in chosen:
        assert isinstance(module, nn.Linear)
        q, scale = quantize_weight_int8(module.weight)
        set_submodule(model, name, int8_dynamic_linear(q, scale, module.bias))
    return PassRecord(
        name=TYPE,
        index=ctx.index,
        options=config.model_dump(mode="json"),
        modules=[n for n, _ in chosen],
        details={"scheme": config.scheme, "weight_bits": 8},
    )
