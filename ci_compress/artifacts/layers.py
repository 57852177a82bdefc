"""Layer codecs: how each supported module is described, stored and rebuilt.

The packed format stores a model as an architecture spec (JSON: module types and
constructor arguments) plus named tensors. Each supported module type has a codec
here. A module of a type not listed (a user's own ``nn.Module`` subclass) is stored as
``custom``: its children are stored normally, and the module itself is rebuilt from the
trusted factory named in the config, never from code named inside the file.

int8 dynamic quantization uses ``torch.ao.nn.quantized.dynamic.Linear``: deprecated in
torch 2.13, but on CPU it is the only int8 Linear with fast kernels without
``torch.compile`` (measured: 0.64 ms vs 0.99 ms fp32; torchao's dynamic int8 config
25 ms). The deprecation warning is silenced only around our own calls.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    import torch
    from torch import nn


@contextmanager
def quiet_torch_ao() -> Iterator[None]:
    """Silence torch.ao's deprecation warnings for the calls we make on purpose."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.ao\.quantization is deprecated.*")
        warnings.filterwarnings(
            "ignore", message=r".*quantize_per_tensor, torch\.quantize_per_channel.*"
        )
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.ao.*")
        yield


@dataclass(frozen=True)
class Codec:
    """How one module type is described (args), stored (tensors) and rebuilt."""

    name: str
    cls: Callable[[], type]
    args: tuple[str, ...] = ()
    to_tensors: Callable[[Any], dict[str, torch.Tensor]] | None = None
    to_args: Callable[[Any], dict[str, Any]] | None = None
    build: Callable[[dict[str, Any], dict[str, torch.Tensor]], Any] | None = None
    learned: Callable[[Any], list[tuple[str, torch.Tensor]]] | None = None
    container: bool = False


def _nn(name: str) -> Callable[[], type]:
    def get() -> type:
        from torch import nn

        return getattr(nn, name)  # type: ignore[no-any-return]

    return get


def _jsonable(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_jsonable(x) for x in v]
    return v


# ---------------------------------------------------------------- int8 dynamic Linear


def quantize_weight_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8: (int8 values, float32 scales). Zeros stay zero."""
    import torch

    w = w.detach().float()
    amax = w.abs().reshape(w.shape[0], -1).amax(dim=1)
    scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    shape = (-1,) + (1,) * (w.dim() - 1)
    q = torch.round(w / scale.view(shape)).clamp_(-127, 127).to(torch.int8)
    return q, scale.float()


def int8_dynamic_linear(
    q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None
) -> nn.Module:
    """A fast CPU int8 Linear (dynamic activation quantization) from int8 weights."""
    import torch

    with quiet_torch_ao():
        from torch.ao.nn.quantized.dynamic import Linear as DynLinear

        out_f, in_f = q.shape
        qw = torch._make_per_channel_quantized_tensor(
            q, scale.double(), torch.zeros(out_f, dtype=torch.long), 0
        )
        make = cast("Callable[..., DynLinear]", DynLinear)  # its __init__ is unannotated
        m = make(in_f, out_f, bias_=bias is not None, dtype=torch.qint8)
        m.set_weight_bias(qw, None if bias is None else bias.detach().float())
    return m


def _dyn_linear_cls() -> type:
    with quiet_torch_ao():
        from torch.ao.nn.quantized.dynamic import Linear as DynLinear
    return DynLinear  # type: ignore[no-any-return]


def _dyn_tensors(m: Any) -> dict[str, torch.Tensor]:
    with quiet_torch_ao():
        w = m.weight()
        b = m.bias()
        if w.qscheme() in (_torch().per_channel_affine, _torch().per_channel_symmetric):
            scale = w.q_per_channel_scales().float()
        else:
            scale = _torch().full((w.shape[0],), float(w.q_scale()))
        out = {"weight_int8": w.int_repr().contiguous(), "weight_scale": scale.contiguous()}
    if b is not None:
        out["bias"] = b.detach().float().contiguous()
    return out


def _dyn_build(args: dict[str, Any], t: dict[str, torch.Tensor]) -> nn.Module:
    return int8_dynamic_linear(t["weight_int8"], t["weight_scale"], t.get("bias"))


def _dyn_learned(m: Any) -> list[tuple[str, torch.Tensor]]:
    t = _dyn_tensors(m)
    w = t["weight_int8"].float() * t["weight_scale"].view(-1, 1)
    return [("weight", w)] + ([("bias", t["bias"])] if "bias" in t else [])


def _dyn_args(m: Any) -> dict[str, Any]:
    return {"in_features": m.in_features, "out_features": m.out_features}


# ---------------------------------------------------------------- pass-made layers


def _pass_module(name: str) -> Callable[[], type]:
    def get() -> type:
        from ci_compress.passes import modules

        return modules.CLASSES[name]

    return get


def _pass_codec(name: str) -> Codec:
    """Codec of a layer class from :mod:`ci_compress.passes.modules`: args + plain tensors.

    int8 weights are stored as int8 plus float32 scales, cluster indices as uint8 plus the
    codebook, fp16/bf16 weights in their own dtype; the default tensor path stores the
    module's parameters and buffers as they are.
    """
    return Codec(
        name,
        _pass_module(name),
        to_args=lambda m: m.args(),
        learned=lambda m: m.learned(),
    )


_PASS_LAYERS = (
    "Int8WeightOnlyLinear",
    "Int8WeightOnlyConv2d",
    "ClusteredLinear",
    "ClusteredConv2d",
    "LowPrecisionLinear",
    "LowPrecisionConv2d",
    "StaticInt8Linear",
    "StaticInt8Conv2d",
)


def _torch() -> Any:
    import torch

    return torch


# ---------------------------------------------------------------- the table

_CONV = (
    "in_channels",
    "out_channels",
    "kernel_size",
    "stride",
    "padding",
    "dilation",
    "groups",
    "bias",
    "padding_mode",
)
_BN = ("num_features", "eps", "momentum", "affine", "track_running_stats")

CODECS: dict[str, Codec] = {
    c.name: c
    for c in [
        Codec("Sequential", _nn("Sequential"), container=True),
        Codec("ModuleList", _nn("ModuleList"), container=True),
        Codec("Linear", _nn("Linear"), ("in_features", "out_features", "bias")),
        Codec("Conv1d", _nn("Conv1d"), _CONV),
        Codec("Conv2d", _nn("Conv2d"), _CONV),
        Codec("BatchNorm1d", _nn("BatchNorm1d"), _BN),
        Codec("BatchNorm2d", _nn("BatchNorm2d"), _BN),
        Codec("LayerNorm", _nn("LayerNorm"), ("normalized_shape", "eps", "elementwise_affine")),
        Codec("ReLU", _nn("ReLU")),
        Codec("ReLU6", _nn("ReLU6")),
        Codec("GELU", _nn("GELU"), ("approximate",)),
        Codec("SiLU", _nn("SiLU")),
        Codec("Tanh", _nn("Tanh")),
        Codec("Sigmoid", _nn("Sigmoid")),
        Codec("LeakyReLU", _nn("LeakyReLU"), ("negative_slope",)),
        Codec("Identity", _nn("Identity")),
        Codec("Dropout", _nn("Dropout"), ("p",)),
        Codec("Flatten", _nn("Flatten"), ("start_dim", "end_dim")),
        Codec("Unflatten", _nn("Unflatten"), ("dim", "unflattened_size")),
        Codec(
            "MaxPool2d",
            _nn("MaxPool2d"),
            ("kernel_size", "stride", "padding", "dilation", "ceil_mode"),
        ),
        Codec(
            "AvgPool2d",
            _nn("AvgPool2d"),
            ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad"),
        ),
        Codec("AdaptiveAvgPool2d", _nn("AdaptiveAvgPool2d"), ("output_size",)),
        Codec("Softmax", _nn("Softmax"), ("dim",)),
        Codec("LogSoftmax", _nn("LogSoftmax"), ("dim",)),
        Codec(
            "DynamicQuantizedLinear",
            _dyn_linear_cls,
            to_tensors=_dyn_tensors,
            to_args=_dyn_args,
            build=_dyn_build,
            learned=_dyn_learned,
        ),
        *[_pass_codec(n) for n in _PASS_LAYERS],
    ]
}


def register(codec: Codec) -> None:
    """Add a codec (used by passes that introduce their own module types)."""
    if codec.name in CODECS:
        raise ValueError(f"codec {codec.name!r} is registered already")
    CODECS[codec.name] = codec


def codec_for(module: nn.Module) -> Codec | None:
    """The codec whose class is exactly the module's class (subclasses are custom)."""
    for codec in CODECS.values():
        if type(module) is codec.cls():
            return codec
    return None


def module_args(codec: Codec, module: nn.Module) -> dict[str, Any]:
    if codec.to_args is not None:
        return codec.to_args(module)
    args: dict[str, Any] = {}
    for name in codec.args:
        value = getattr(module, name)
        if name == "bias":
            value = value is not None
        args[name] = _jsonable(value)
    return args


def own_tensors(codec: Codec | None, module: nn.Module) -> dict[str, torch.Tensor]:
    """The module's own (non-recursive) tensors to store."""
    if codec is not None and codec.to_tensors is not None:
        return codec.to_tensors(module)
    out: dict[str, torch.Tensor] = {}
    for name, p in module._parameters.items():
        if p is not None:
            out[name] = p.detach()
    for name, b in module._buffers.items():
        if b is not None and name not in module._non_persistent_buffers_set:
            out[name] = b.detach()
    return out


def learned_tensors(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The module's own learned weights as float tensors (for counting parameters)."""
    codec = codec_for(module)
    if codec is not None and codec.learned is not None:
        return codec.learned(module)
    return [(n, p.detach()) for n, p in module._parameters.items() if p is not None]


def build_module(codec: Codec, args: dict[str, Any], tensors: dict[str, torch.Tensor]) -> nn.Module:
    if codec.build is not None:
        return codec.build(args, tensors)  # type: ignore[no-any-return]
    cls = codec.cls()
    kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in args.items()}
    module = cls(**kwargs)
    if tensors:
        own = {k: v for k, v in tensors.items()}
        missing = module.load_state_dict(own, strict=False)
        unexpected = [k for k in missing.unexpected_keys if "." not in k]
        if unexpected:
            raise KeyError(f"unexpected tensors {unexpected} for {codec.name}")
    return module  # type: ignore[no-any-return]
