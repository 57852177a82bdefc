"""Layer codecs: how each supported module is described, stored and rebuilt.

The packed format stores a model as an architecture spec (JSON: module types and
constructor arguments) plus named tensors. Each supported module type has a codec
here. A module of a type not listed (a user's own ``nn.Module`` subclass) is stored as
``custom``: its children are stored normally, and the module itself is rebuilt from the
trusted factory named in the config, never from code named inside the file.

The layers the passes produce get their codecs from the table that defines them
(:data:`ci_compress.layers.modules.CLASSES`): adding a layer type there makes it
storable here. torch's dynamic int8 Linear is described in :mod:`ci_compress.layers.int8`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ci_compress.layers import modules
from ci_compress.layers.int8 import (
    dynamic_linear_class,
    dynamic_linear_tensors,
    int8_dynamic_linear_taking,
)

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclass(frozen=True)
class Codec:
    """How one module type is described (args), stored (tensors) and rebuilt."""

    name: str
    cls: Callable[[], type]
    args: tuple[str, ...] = ()
    to_tensors: Callable[[Any], dict[str, torch.Tensor]] | None = None
    to_args: Callable[[Any], dict[str, Any]] | None = None
    build: Callable[[dict[str, Any], dict[str, torch.Tensor]], Any] | None = None
    container: bool = False
    tensor_names: tuple[str, ...] = ()  # with ``build``: the tensors it may be given


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


def _dyn_build(args: dict[str, Any], t: dict[str, torch.Tensor]) -> nn.Module:
    return int8_dynamic_linear_taking(t)  # frees the int8 weight before fbgemm's copy


def _dyn_args(m: Any) -> dict[str, Any]:
    return {"in_features": m.in_features, "out_features": m.out_features}


# ---------------------------------------------------------------- pass-made layers


def _pass_codec(cls: type) -> Codec:
    """Codec of a layer class from :mod:`ci_compress.layers.modules`: args + plain tensors.

    int8 weights are stored as int8 plus float32 scales, cluster indices as uint8 plus the
    codebook, fp16/bf16 weights in their own dtype; the default tensor path stores the
    module's parameters and buffers as they are.
    """
    return Codec(cls.__name__, lambda: cls, to_args=lambda m: m.args())


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
            dynamic_linear_class,
            to_tensors=dynamic_linear_tensors,
            to_args=_dyn_args,
            build=_dyn_build,
            tensor_names=("bias", "weight_int8", "weight_scale"),
        ),
        *[_pass_codec(cls) for cls in modules.CLASSES.values()],
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


def build_module(codec: Codec, args: dict[str, Any], tensors: dict[str, torch.Tensor]) -> nn.Module:
    """Rebuild a module from its constructor arguments and exactly its stored tensors.

    The module is constructed on the ``meta`` device (its constructor allocates nothing,
    whatever sizes the arguments name) and the stored tensors are assigned to it, so a
    rebuilt model holds one copy of its weights. Strict: a tensor the module has but the
    file lacks, or one the file has but the module does not, is an error (a missing one
    would otherwise keep the constructor's random initialisation).
    """
    import torch

    if codec.build is not None:
        unexpected = sorted(set(tensors) - set(codec.tensor_names))
        if unexpected:
            raise KeyError(
                f"{codec.name} takes tensors {list(codec.tensor_names)}, not {unexpected}"
            )
        built: nn.Module = codec.build(args, tensors)  # a missing tensor is a KeyError there
        return built
    cls = codec.cls()
    kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in args.items()}
    with torch.device("meta"):
        module: nn.Module = cls(**kwargs)
    if tensors:
        module.load_state_dict(tensors, strict=False, assign=True)
    expected = set(own_tensors(codec, module))
    missing = sorted(expected - set(tensors))
    unexpected = sorted(set(tensors) - expected)
    if missing or unexpected:
        raise KeyError(
            f"{codec.name} has tensors {sorted(expected)}; the file "
            + (f"lacks {missing}" if missing else "")
            + (" and " if missing and unexpected else "")
            + (f"has unexpected {unexpected}" if unexpected else "")
        )
    return module
