"""Module types the passes produce: plain ``nn.Module`` classes with plain tensors.

Each stores its weight in a compressed form as ordinary buffers (int8 values and
scales, uint8 cluster indices and a codebook, fp16/bf16 values), so safetensors can store
it and the packed format rebuilds it from constructor arguments plus tensors (codecs in
:mod:`ci_compress.packing.codecs`, derived from :data:`CLASSES`). Tensor subclasses (torchao's quantized tensors)
are avoided on purpose: safetensors cannot store them and they need torchao to load.

Every class exists for Linear and Conv2d geometry, and int8, k-means and fp16/bf16 for
``nn.Embedding`` tables (which gather rows, then decode only those). The forward pass decodes the weight
and runs the ordinary float op, except :class:`StaticInt8Linear`/:class:`StaticInt8Conv2d`,
which run torch's int8 kernels. Decoding costs time on every call: these layers make the
file smaller, not the model faster (the README gives the measured latencies).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ci_compress.layers.int8 import quantize_weight_int8, quiet_torch_ao


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    a, b = v
    return (int(a), int(b))


class _Compressed(nn.Module):
    """A layer whose weight is stored compressed: its geometry (Linear, Conv2d or an
    embedding table) gives :attr:`weight_shape`, its storage (the mixins below) the
    tensors and the arguments beyond the geometry."""

    @property
    def weight_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    def decoded_weight(self) -> torch.Tensor:
        raise NotImplementedError

    def extra_args(self) -> dict[str, Any]:
        return {}


class _Int8Weight(_Compressed):
    """int8 weights (symmetric, one float32 scale per output channel or table row)."""

    weight_int8: torch.Tensor
    weight_scale: torch.Tensor

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.register_buffer("weight_int8", torch.zeros(self.weight_shape, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(self.weight_shape[0]))

    def decoded_weight(self) -> torch.Tensor:
        shape = (-1,) + (1,) * (len(self.weight_shape) - 1)
        return self.weight_int8.float() * self.weight_scale.view(shape)

    def quantize_from(self, weight: torch.Tensor) -> None:
        q, scale = quantize_weight_int8(weight)
        self.weight_int8.copy_(q)
        self.weight_scale.copy_(scale)


class _ClusteredWeight(_Compressed):
    """Weight sharing: each weight is ``codebook[indices]`` (uint8 indices, <= 256 centroids).

    The codebook is a Parameter so centroid fine-tuning gets its gradient (the sum of the
    gradients of the weights sharing it, as in Deep Compression) from autograd.
    """

    indices: torch.Tensor

    def __init__(self, *args: Any, bits: int = 4, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.bits = int(bits)
        self.register_buffer("indices", torch.zeros(self.weight_shape, dtype=torch.uint8))
        self.codebook = nn.Parameter(torch.zeros(2**self.bits))

    def decoded_weight(self) -> torch.Tensor:
        return self.codebook[self.indices.long()]

    def extra_args(self) -> dict[str, Any]:
        return {"bits": self.bits}


class _LowPrecisionWeight(_Compressed):
    """The weight as a float16 or bfloat16 Parameter."""

    def __init__(self, *args: Any, dtype: str = "float16", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.dtype_name = str(dtype)
        dt = getattr(torch, self.dtype_name)
        self.weight = nn.Parameter(torch.zeros(self.weight_shape, dtype=dt))

    def extra_args(self) -> dict[str, Any]:
        return {"dtype": self.dtype_name}


class _Geometry(_Compressed):
    """Linear or Conv2d shape and the float op, shared by the compressed layer classes."""

    KIND = "linear"

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        bias: bool = True,
        kernel_size: Any = (1, 1),
        stride: Any = (1, 1),
        padding: Any = (0, 0),
        dilation: Any = (1, 1),
        groups: int = 1,
    ) -> None:
        super().__init__()
        self.in_dim, self.out_dim = int(in_dim), int(out_dim)
        self.kernel_size, self.stride = _pair(kernel_size), _pair(stride)
        self.padding, self.dilation = _pair(padding), _pair(dilation)
        self.groups = int(groups)
        self.bias: nn.Parameter | None = nn.Parameter(torch.zeros(self.out_dim)) if bias else None

    @property
    def weight_shape(self) -> tuple[int, ...]:
        if self.KIND == "linear":
            return (self.out_dim, self.in_dim)
        return (self.out_dim, self.in_dim // self.groups, *self.kernel_size)

    def geometry(self) -> dict[str, Any]:
        args: dict[str, Any] = {
            "in_dim": self.in_dim,
            "out_dim": self.out_dim,
            "bias": self.bias is not None,
        }
        if self.KIND == "conv2d":
            args |= {
                "kernel_size": list(self.kernel_size),
                "stride": list(self.stride),
                "padding": list(self.padding),
                "dilation": list(self.dilation),
                "groups": self.groups,
            }
        return args

    @staticmethod
    def geometry_of(layer: nn.Module) -> dict[str, Any]:
        """Constructor arguments copying the shape of an ``nn.Linear`` or ``nn.Conv2d``."""
        if isinstance(layer, nn.Linear):
            return {
                "in_dim": layer.in_features,
                "out_dim": layer.out_features,
                "bias": layer.bias is not None,
            }
        assert isinstance(layer, nn.Conv2d)
        return {
            "in_dim": layer.in_channels,
            "out_dim": layer.out_channels,
            "bias": layer.bias is not None,
            "kernel_size": layer.kernel_size,
            "stride": layer.stride,
            "padding": layer.padding,
            "dilation": layer.dilation,
            "groups": layer.groups,
        }

    def run(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        if self.KIND == "linear":
            return F.linear(x, w, b)
        return F.conv2d(x, w, b, self.stride, self.padding, self.dilation, self.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x, self.decoded_weight(), self.bias)

    def learned(self) -> list[tuple[str, torch.Tensor]]:
        """Float views of the learned tensors (to count parameters and sparsity)."""
        out = [("weight", self.decoded_weight().detach().float())]
        if self.bias is not None:
            out.append(("bias", self.bias.detach().float()))
        return out

    def args(self) -> dict[str, Any]:
        return self.geometry() | self.extra_args()


# ---------------------------------------------------------------- int8 weight-only


class _Int8WeightOnly(_Int8Weight, _Geometry):
    """int8 weights (symmetric, per output channel) + float scales; float activations."""

    @classmethod
    def from_float(cls, layer: nn.Module) -> _Int8WeightOnly:
        m = cls(**cls.geometry_of(layer))
        m.quantize_from(layer.weight)  # type: ignore[arg-type]
        if layer.bias is not None:
            m.bias.data.copy_(layer.bias.detach())  # type: ignore[union-attr,operator]
        return m


class Int8WeightOnlyLinear(_Int8WeightOnly):
    KIND = "linear"


class Int8WeightOnlyConv2d(_Int8WeightOnly):
    KIND = "conv2d"


# ---------------------------------------------------------------- k-means clustered


class _Clustered(_ClusteredWeight, _Geometry):
    """k-means weight sharing for a Linear or Conv2d."""


class ClusteredLinear(_Clustered):
    KIND = "linear"


class ClusteredConv2d(_Clustered):
    KIND = "conv2d"


# ---------------------------------------------------------------- fp16 / bf16


class _LowPrecision(_LowPrecisionWeight, _Geometry):
    """Weights (and bias) stored and computed in float16 or bfloat16; float32 in and out."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.bias is not None:
            self.bias = nn.Parameter(self.bias.detach().to(self.weight.dtype))

    def decoded_weight(self) -> torch.Tensor:
        return self.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x.to(self.weight.dtype), self.weight, self.bias).to(x.dtype)

    @classmethod
    def from_float(cls, layer: nn.Module, dtype: str) -> _LowPrecision:
        m = cls(**cls.geometry_of(layer), dtype=dtype)
        with torch.no_grad():
            m.weight.copy_(layer.weight)  # type: ignore[arg-type]
            if layer.bias is not None:
                m.bias.copy_(layer.bias)  # type: ignore[union-attr,arg-type]
        return m


class LowPrecisionLinear(_LowPrecision):
    KIND = "linear"


class LowPrecisionConv2d(_LowPrecision):
    KIND = "conv2d"


# ---------------------------------------------------------------- int8 static


class _StaticInt8(_Int8Weight, _Geometry):
    """Post-training static int8: activations quantized with calibrated scales.

    Runs torch's int8 kernels (``torch.ao.nn.quantized.Linear``/``Conv2d``, fbgemm/x86):
    torch.ao is deprecated in torch 2.13, but it is the only eager CPU int8 GEMM/conv
    (torchao's static int8 configs need ``torch.compile`` or a GPU). Each layer quantizes
    its float input with the calibrated (scale, zero point), runs int8, and dequantizes
    its output, so the layer drops into any float model. Stored as plain tensors; the
    packed torch.ao module is rebuilt from them on first use.
    """

    # Runs torch.ao's int8 kernels (see ci_compress.layers.inference).
    uses_torch_ao_kernels = True
    input_qparams: torch.Tensor
    output_qparams: torch.Tensor

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.register_buffer("input_qparams", torch.tensor([1.0, 0.0]))
        self.register_buffer("output_qparams", torch.tensor([1.0, 0.0]))
        self._clear()

    def _clear(self) -> None:
        object.__setattr__(self, "_q", None)

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self._clear()
        super()._load_from_state_dict(*args, **kwargs)

    def _packed(self) -> nn.Module:
        q = self.__dict__.get("_q")
        if q is not None:
            return q  # type: ignore[no-any-return]
        with quiet_torch_ao():
            import torch.ao.nn.quantized as nnq

            qw = torch._make_per_channel_quantized_tensor(
                self.weight_int8,
                self.weight_scale.double(),
                torch.zeros(self.out_dim, dtype=torch.long),
                0,
            )
            b = None if self.bias is None else self.bias.detach().float()
            if self.KIND == "linear":
                q = nnq.Linear(self.in_dim, self.out_dim, bias_=b is not None)  # type: ignore[no-untyped-call]
            else:
                q = nnq.Conv2d(  # type: ignore[no-untyped-call]
                    self.in_dim,
                    self.out_dim,
                    self.kernel_size,
                    stride=self.stride,
                    padding=self.padding,
                    dilation=self.dilation,
                    groups=self.groups,
                    bias=b is not None,
                )
            q.set_weight_bias(qw, b)
            q.scale = float(self.output_qparams[0])
            q.zero_point = int(self.output_qparams[1])
        object.__setattr__(self, "_q", q)
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with quiet_torch_ao():
            qx = torch.quantize_per_tensor(
                x.float().contiguous(),
                float(self.input_qparams[0]),
                int(self.input_qparams[1]),
                torch.quint8,
            )
            return self._packed()(qx).dequantize()  # type: ignore[no-any-return]

    def __deepcopy__(self, memo: dict[int, Any]) -> _StaticInt8:
        new = type(self)(**self.args())
        new.load_state_dict(self.state_dict())
        return new

    @classmethod
    def from_float(
        cls, layer: nn.Module, input_range: tuple[float, float], output_range: tuple[float, float]
    ) -> _StaticInt8:
        m = cls(**cls.geometry_of(layer))
        with torch.no_grad():
            m.quantize_from(layer.weight)  # type: ignore[arg-type]
            if layer.bias is not None:
                m.bias.copy_(layer.bias)  # type: ignore[union-attr,arg-type]
            m.input_qparams.copy_(torch.tensor(affine_qparams(*input_range)))
            m.output_qparams.copy_(torch.tensor(affine_qparams(*output_range)))
        m._clear()
        return m


def affine_qparams(lo: float, hi: float) -> tuple[float, float]:
    """(scale, zero point) mapping [lo, hi] (widened to hold 0) onto quint8 [0, 255]."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / 255.0 if hi > lo else 1.0
    zp = min(255, max(0, round(-lo / scale)))
    return scale, float(zp)


class StaticInt8Linear(_StaticInt8):
    KIND = "linear"


class StaticInt8Conv2d(_StaticInt8):
    KIND = "conv2d"


# ---------------------------------------------------------------- embeddings


class _Embedding(_Compressed):
    """An ``nn.Embedding`` lookup table stored compressed; the forward pass gathers the
    rows it is asked for and decodes only those (a table of 30k rows is never decoded
    whole to look up a batch).

    ``padding_idx`` is kept (a padding row stays what it was: zeros stay exactly zero in
    every encoding). ``max_norm`` is refused by the passes: it rewrites the table on every
    lookup, which a compressed table cannot do. ``sparse`` and ``scale_grad_by_freq``
    only shape gradients of the table, which these layers do not train (the clustered
    table trains its codebook, through autograd).
    """

    def __init__(
        self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None
    ) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = int(num_embeddings), int(embedding_dim)
        self.padding_idx = None if padding_idx is None else int(padding_idx)

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return (self.num_embeddings, self.embedding_dim)

    @staticmethod
    def geometry_of(layer: nn.Module) -> dict[str, Any]:
        """Constructor arguments copying the shape of an ``nn.Embedding``."""
        assert isinstance(layer, nn.Embedding)
        return {
            "num_embeddings": layer.num_embeddings,
            "embedding_dim": layer.embedding_dim,
            "padding_idx": layer.padding_idx,
        }

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decoded_weight(self) -> torch.Tensor:
        # the whole table through rows(); the int8 and clustered storages decode it
        # directly (the same values)
        return self.rows(torch.arange(self.num_embeddings, device=self._device()))

    def _device(self) -> torch.device:
        return next(iter(self.buffers())).device

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self.rows(input)

    def learned(self) -> list[tuple[str, torch.Tensor]]:
        return [("weight", self.decoded_weight().detach().float())]

    def args(self) -> dict[str, Any]:
        return {
            "num_embeddings": self.num_embeddings,
            "embedding_dim": self.embedding_dim,
            "padding_idx": self.padding_idx,
        } | self.extra_args()

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, padding_idx={self.padding_idx}"


class Int8WeightOnlyEmbedding(_Int8Weight, _Embedding):
    """int8 rows (symmetric, one float32 scale per row): 4x smaller than float32. The
    forward pass gathers int8 rows and their scales, then dequantizes only those."""

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        q = F.embedding(idx, self.weight_int8)
        return q.float() * F.embedding(idx, self.weight_scale.unsqueeze(1))

    @classmethod
    def from_float(cls, layer: nn.Module) -> Int8WeightOnlyEmbedding:
        m = cls(**cls.geometry_of(layer))
        m.quantize_from(layer.weight)  # type: ignore[arg-type]
        return m


class ClusteredEmbedding(_ClusteredWeight, _Embedding):
    """k-means weight sharing: each entry is ``codebook[indices]`` (uint8 indices); the
    forward pass gathers index rows, then looks them up in the codebook."""

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        return self.codebook[F.embedding(idx, self.indices).long()]


class LowPrecisionEmbedding(_LowPrecisionWeight, _Embedding):
    """A float16 or bfloat16 table; the gathered rows come out as float32."""

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        return F.embedding(idx, self.weight).float()

    def _device(self) -> torch.device:
        return self.weight.device

    @classmethod
    def from_float(cls, layer: nn.Module, dtype: str) -> LowPrecisionEmbedding:
        m = cls(**cls.geometry_of(layer), dtype=dtype)
        with torch.no_grad():
            m.weight.copy_(layer.weight)  # type: ignore[arg-type]
        return m


EMBEDDINGS: tuple[type[_Embedding], ...] = (
    Int8WeightOnlyEmbedding,
    ClusteredEmbedding,
    LowPrecisionEmbedding,
)

CLASSES: dict[str, type[nn.Module]] = {
    c.__name__: c
    for c in (
        Int8WeightOnlyLinear,
        Int8WeightOnlyConv2d,
        ClusteredLinear,
        ClusteredConv2d,
        LowPrecisionLinear,
        LowPrecisionConv2d,
        StaticInt8Linear,
        StaticInt8Conv2d,
        *EMBEDDINGS,
    )
}
