"""int8 weights, and torch's fast dynamic int8 Linear.

int8 dynamic quantization uses ``torch.ao.nn.quantized.dynamic.Linear``: deprecated in
torch 2.13, but on CPU it is the only int8 Linear with fast kernels without
``torch.compile`` (measured on an Intel Xeon: 0.64 ms vs 0.99 ms fp32; torchao's dynamic
int8 config 25 ms; on AVX2 without VNNI it is slower than fp32, see docs/libraries.md).
The deprecation warning is silenced only around our own calls.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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


def quantize_weight_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8: (int8 values, float32 scales). Zeros stay zero."""
    import torch

    w = w.detach().float()
    amax = w.abs().reshape(w.shape[0], -1).amax(dim=1)
    scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    shape = (-1,) + (1,) * (w.dim() - 1)
    q = torch.round(w / scale.view(shape)).clamp_(-127, 127).to(torch.int8)
    return q, scale.float()


# The plain tensors a dynamic int8 Linear was built from, kept on it by the quantize pass
# so packing reads them instead of unpacking fbgemm's form (an unpack is half a prepack's
# CPU: 6.9 ms against 12.6 ms per million weights). Keyed on the packed object: a module
# whose weights were set again (``set_weight_bias``) no longer matches and is unpacked.
_SOURCE = "_ccz_int8_source"


def int8_dynamic_linear(
    q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, *, keep: bool = False
) -> nn.Module:
    """A fast CPU int8 Linear (dynamic activation quantization) from int8 weights.

    ``keep`` keeps ``q``, ``scale`` and ``bias`` on the module (1 byte per weight) for
    :func:`dynamic_linear_tensors`: the quantize pass keeps them for the packing that
    follows it; a reloaded student, never packed again, does not.
    """
    m = _dynamic_linear(_quantized_weight(q, scale), bias)
    if keep:
        b = None if bias is None else bias.detach().float().contiguous()
        source = (q.contiguous(), scale.float().contiguous(), b)
        setattr(m, _SOURCE, (cast(Any, m)._packed_params._packed_params, *source))
    return m


def int8_dynamic_linear_taking(t: dict[str, torch.Tensor]) -> nn.Module:
    """:func:`int8_dynamic_linear` from a reloaded layer's tensors, taking the int8 weight
    out of ``t``: it is freed once torch has its quantized copy, before fbgemm packs a
    third one (a reload's peak held all three: one weight's bytes more)."""
    return _dynamic_linear(
        _quantized_weight(t.pop("weight_int8"), t["weight_scale"]), t.get("bias")
    )


def _quantized_weight(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """A per-row qint8 copy of ``q`` (zero points 0) with the given scales."""
    import torch

    with quiet_torch_ao():
        return torch._make_per_channel_quantized_tensor(
            q, scale.double(), torch.zeros(q.shape[0], dtype=torch.long), 0
        )


def _dynamic_linear(qw: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    import torch

    with quiet_torch_ao():
        from torch.ao.nn.quantized.dynamic import Linear as DynLinear

        out_f, in_f = qw.shape
        make = cast("Callable[..., DynLinear]", DynLinear)  # its __init__ is unannotated
        # Built 1x1, then given its shape and weights: its __init__ prepacks an empty
        # out x in weight that set_weight_bias throws away, which doubled fbgemm's
        # packing work on every reload (the module is the same either way)
        m = make(1, 1, bias_=bias is not None, dtype=torch.qint8)
        m.in_features, m.out_features = in_f, out_f
        m.set_weight_bias(qw, None if bias is None else bias.detach().float())
    return m


def dynamic_linear_class() -> type:
    """``torch.ao.nn.quantized.dynamic.Linear`` (imported without its deprecation warning)."""
    with quiet_torch_ao():
        from torch.ao.nn.quantized.dynamic import Linear as DynLinear
    return DynLinear


def dynamic_linear_tensors(m: Any) -> dict[str, torch.Tensor]:
    """A dynamic int8 Linear's weight as plain tensors: int8 values, per-row scales, bias."""
    import torch

    kept = getattr(m, _SOURCE, None)
    if kept is not None and kept[0] is m._packed_params._packed_params:
        q, scale, bias = kept[1:]
        return {"weight_int8": q, "weight_scale": scale} | ({} if bias is None else {"bias": bias})
    with quiet_torch_ao():
        w, b = m._weight_bias()  # one unpack: weight() and bias() each unpack it all
        if w.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
            scale = w.q_per_channel_scales().float()
        else:
            scale = torch.full((w.shape[0],), float(w.q_scale()))
        out = {"weight_int8": w.int_repr().contiguous(), "weight_scale": scale.contiguous()}
    if b is not None:
        out["bias"] = b.detach().float().contiguous()
    return out


def dynamic_linear_learned(m: Any) -> list[tuple[str, torch.Tensor]]:
    """A dynamic int8 Linear's weights decoded to float (for counting)."""
    t = dynamic_linear_tensors(m)
    w = t["weight_int8"].float() * t["weight_scale"].view(-1, 1)
    return [("weight", w)] + ([("bias", t["bias"])] if "bias" in t else [])
