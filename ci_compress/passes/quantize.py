"""Quantization of Linear (and Conv2d) layers: int8 dynamic, int8 static, int8 weight-only,
fp16, bf16; and of ``nn.Embedding`` tables (every scheme but int8-static).

``int8-dynamic``: int8 weights (symmetric, per output channel) with activations
quantized on the fly, through ``torch.ao.nn.quantized.dynamic.Linear``. torch.ao is
deprecated in torch 2.13, but on CPU it is the only int8 Linear with fast kernels
without ``torch.compile`` (torchao's dynamic-activation int8 config ran 25x slower here,
its pt2e int8 graph 3.3x slower than fp32: docs/libraries.md, which is why torchao is not
a dependency). Weights shrink 4x; biases stay fp32.

``int8-static``: post-training static quantization of Linear and Conv2d. The input and
output range of each layer is measured on ``calibration_batches`` batches of
``data.calibration`` (min/max), weights are int8 per output channel, and the layer runs
torch.ao's int8 kernels (the deprecated API again, for the same reason: torchao has no
eager CPU static int8 path). Each layer quantizes its input and dequantizes its output,
so it composes with any float layer around it.

``int8-weight-only``: int8 weights + per-channel scales, dequantized in forward; 4x
smaller weights, float compute. torchao's ``Int8WeightOnlyConfig`` does the same math but
makes tensor subclasses that safetensors cannot store (and measured slower than fp32 on
this CPU), so the pass uses its own plain module (:mod:`ci_compress.layers.modules`).

``fp16`` / ``bf16``: weights stored and computed in half precision (2x smaller); inputs
and outputs stay float32.

``nn.Embedding``: ``int8-dynamic`` and ``int8-weight-only`` store the table as int8 rows
with one float32 scale per row (a lookup has no activations to quantize, so both are
weight-only for tables); ``fp16``/``bf16`` store it in half precision. The lookup gathers
the rows asked for and decodes only those. ``max_norm`` tables are refused. A table whose
weight is tied to another module (a language model's output layer) is untied, and the
pass says so (a warning, and ``details.untied``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from ci_compress.layers.batches import call_model, map_tensors, to_device
from ci_compress.layers.int8 import int8_dynamic_linear, quantize_weight_int8
from ci_compress.passes.base import (
    PassConfig,
    PassContext,
    PassRecord,
    refuse_embedding,
    select,
    set_submodule,
    tied_weights,
    untie_notes,
)
from ci_compress.passes.training import require

if TYPE_CHECKING:
    import torch
    from torch import nn

TYPE = "quantize"
Scheme = Literal["int8-dynamic", "int8-static", "int8-weight-only", "fp16", "bf16"]


class QuantizeConfig(PassConfig):
    """Quantize Linear (and, except int8-dynamic, Conv2d) layers and Embedding tables."""

    type: Literal["quantize"] = "quantize"
    scheme: Scheme = Field(
        "int8-dynamic",
        description=(
            "int8-dynamic: int8 weights, activations quantized per batch (fast CPU kernels, Linear; "
            "Embedding tables weight-only); "
            "int8-static: int8 weights and activations calibrated on data.calibration (Linear, Conv2d); "
            "int8-weight-only: int8 weights, float compute (Linear, Conv2d, Embedding); "
            "fp16 / bf16: half-precision weights (Linear, Conv2d, Embedding)."
        ),
    )
    calibration_batches: int = Field(
        8,
        ge=1,
        le=100000,
        description="int8-static: batches of data.calibration to measure ranges on.",
    )

    def needs_data(self) -> tuple[tuple[str, str], ...]:
        if self.scheme == "int8-static":
            return (("data.calibration", "uses scheme int8-static"),)
        return ()


Config = QuantizeConfig


def _kinds(scheme: str) -> tuple[type[nn.Module], ...]:
    from torch import nn

    if scheme == "int8-dynamic":
        return (nn.Linear, nn.Embedding)
    if scheme == "int8-static":
        return (nn.Linear, nn.Conv2d)
    return (nn.Linear, nn.Conv2d, nn.Embedding)


def _refuse(module: nn.Module) -> str | None:
    from torch import nn

    if isinstance(module, nn.Conv2d) and module.padding_mode != "zeros":
        return f"has padding_mode={module.padding_mode!r}: only 'zeros' is quantized; exclude it"
    return refuse_embedding(module)


def _embedding(model: nn.Module, name: str, module: nn.Module, scheme: str) -> None:
    """An ``nn.Embedding`` is quantized weight-only whatever the scheme: a lookup has no
    activations to quantize (``int8-dynamic`` stores its table like ``int8-weight-only``)."""
    from ci_compress.layers import modules

    if scheme in ("fp16", "bf16"):
        dtype = "float16" if scheme == "fp16" else "bfloat16"
        set_submodule(model, name, modules.LowPrecisionEmbedding.from_float(module, dtype))
    else:
        set_submodule(model, name, modules.Int8WeightOnlyEmbedding.from_float(module))


def apply(model: nn.Module, config: QuantizeConfig, ctx: PassContext) -> PassRecord:
    """Replace each selected layer by its quantized counterpart, in place."""
    from torch import nn

    from ci_compress.layers import modules  # torch-bearing: imported on use

    where = f"passes[{ctx.index}]"
    calib = None
    if config.scheme == "int8-static":
        calib = require(ctx.calibration_data, "data.calibration", where, config.needs_data()[0][1])
    selected = select(
        model, config.include, config.exclude, _kinds(config.scheme), path=where, refuse=_refuse
    )
    ties = tied_weights(model, selected)
    details: dict[str, Any] = {
        "scheme": config.scheme,
        "weight_bits": 16 if config.scheme in ("fp16", "bf16") else 8,
    }
    tables = [(n, m) for n, m in selected if isinstance(m, nn.Embedding)]
    for name, table in tables:
        _embedding(model, name, table, config.scheme)
    if tables:
        details["embeddings"] = [n for n, _ in tables]
    chosen = [(n, m) for n, m in selected if not isinstance(m, nn.Embedding)]
    if config.scheme == "int8-dynamic":
        _dynamic(model, chosen)
    elif config.scheme == "int8-static":
        assert calib is not None
        ranges = calibrate(
            model, [n for n, _ in chosen], calib, config.calibration_batches, ctx.device
        )

        for name, module in chosen:
            cls = (
                modules.StaticInt8Linear
                if isinstance(module, nn.Linear)
                else modules.StaticInt8Conv2d
            )
            inp, out = ranges[name]
            set_submodule(model, name, cls.from_float(module, inp, out))
        details["activation_bits"] = 8
        details["calibration_batches"] = config.calibration_batches
        details["ranges"] = {
            n: [list(map(_r, i)), list(map(_r, o))] for n, (i, o) in ranges.items()
        }
    elif config.scheme == "int8-weight-only":
        for name, module in chosen:
            wo = (
                modules.Int8WeightOnlyLinear
                if isinstance(module, nn.Linear)
                else modules.Int8WeightOnlyConv2d
            )
            set_submodule(model, name, wo.from_float(module))
    else:
        dtype = "float16" if config.scheme == "fp16" else "bfloat16"
        for name, module in chosen:
            half = (
                modules.LowPrecisionLinear
                if isinstance(module, nn.Linear)
                else modules.LowPrecisionConv2d
            )
            set_submodule(model, name, half.from_float(module, dtype))
    warnings = untie_notes(ties, [n for n, _ in selected], f"quantized ({config.scheme})")
    if warnings:
        details["untied"] = ties
    return PassRecord(
        name=TYPE,
        index=ctx.index,
        options=config.model_dump(mode="json"),
        modules=[n for n, _ in selected],
        details=details,
        warnings=warnings,
    )


def _r(v: float) -> float:
    return round(float(v), 6)


def _dynamic(model: nn.Module, chosen: list[tuple[str, nn.Module]]) -> None:

    for name, module in chosen:
        q, scale = quantize_weight_int8(module.weight)  # type: ignore[arg-type]
        set_submodule(model, name, int8_dynamic_linear(q, scale, module.bias, keep=True))  # type: ignore[arg-type]


def calibrate(
    model: nn.Module, names: list[str], data: Any, batches: int, device: str = "cpu"
) -> dict[str, tuple[tuple[float, float], tuple[float, float]]]:
    """(input min, max) and (output min, max) of each named layer over ``batches`` batches.

    Batches may be of any structure; floating inputs run as float32, others as they are.
    The model's output is not used (hooks read each layer's), so its structure does not
    matter. On a GPU (``device``) the model moves there and back.
    """
    import torch

    ranges: dict[str, list[float]] = {n: [0.0, 0.0, 0.0, 0.0] for n in names}
    seen: set[str] = set()

    def hook(name: str) -> Any:
        def record(mod: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            x = args[0].detach()
            r = ranges[name]
            lo_i, hi_i, lo_o, hi_o = (
                float(x.min()),
                float(x.max()),
                float(out.detach().min()),
                float(out.detach().max()),
            )
            if name not in seen:
                r[:] = [lo_i, hi_i, lo_o, hi_o]
                seen.add(name)
            else:
                r[:] = [min(r[0], lo_i), max(r[1], hi_i), min(r[2], lo_o), max(r[3], hi_o)]

        return record

    handles = [model.get_submodule(n).register_forward_hook(hook(n)) for n in names]
    was_training = model.training
    dev = torch.device(device)
    model.eval()
    if dev.type != "cpu":
        model.to(dev)
    try:
        with torch.no_grad():
            for i, (x, _) in enumerate(data()):
                if i >= batches:
                    break
                x = map_tensors(x, lambda t: t.float() if torch.is_floating_point(t) else t)
                call_model(model, x if dev.type == "cpu" else to_device(x, dev))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
        if dev.type != "cpu":
            model.to("cpu")
    return {n: ((r[0], r[1]), (r[2], r[3])) for n, r in ranges.items()}
