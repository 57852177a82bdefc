"""torch.ao's dynamic int8 Linear, built from and read back to plain tensors, with
fbgemm's packing done once each way (it is most of an int8 student's pack + reload)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from ci_compress.layers.int8 import (
    dynamic_linear_class,
    dynamic_linear_tensors,
    int8_dynamic_linear,
)
from ci_compress.packing.file import load_packed, pack
from ci_compress.passes import quantize
from ci_compress.passes.base import PassContext


def _weights() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    q = torch.randint(-127, 128, (96, 64), dtype=torch.int8, generator=g)
    return q, torch.rand(96, generator=g) / 50 + 1e-3, torch.randn(96, generator=g)


def _spy(monkeypatch: pytest.MonkeyPatch, op: str) -> list[tuple[int, ...]]:
    """The weight shapes fbgemm's ``op`` is called on."""
    namespace = torch.ops.quantized
    original = getattr(namespace, op)
    shapes: list[tuple[int, ...]] = []

    def spy(*args: Any) -> Any:
        if op == "linear_prepack":
            shapes.append(tuple(args[0].shape))
        else:
            shapes.append(())
        return original(*args)

    monkeypatch.setattr(namespace, op, spy)
    return shapes


def test_built_module_equals_torch_aos_own_and_packs_its_weight_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    q, scale, bias = _weights()
    prepacked = _spy(monkeypatch, "linear_prepack")
    m = int8_dynamic_linear(q, scale, bias)
    # one full-size prepack (its __init__ used to prepack an empty 96x64 weight first)
    assert [s for s in prepacked if s != (1, 1)] == [(96, 64)]
    monkeypatch.undo()

    reference = dynamic_linear_class()(64, 96, dtype=torch.qint8)
    qw = torch._make_per_channel_quantized_tensor(
        q, scale.double(), torch.zeros(96, dtype=torch.long), 0
    )
    reference.set_weight_bias(qw, bias)
    assert (m.in_features, m.out_features) == (64, 96) and repr(m) == repr(reference)
    x = torch.randn(8, 64, generator=torch.Generator().manual_seed(1))
    assert torch.equal(m(x), reference(x))
    for (k, a), (k2, b) in zip(m.state_dict().items(), reference.state_dict().items(), strict=True):
        assert k == k2
        if isinstance(a, torch.Tensor):
            assert torch.equal(
                a.int_repr() if a.is_quantized else a, b.int_repr() if b.is_quantized else b
            )


def test_tensors_read_back_with_one_unpack(monkeypatch: pytest.MonkeyPatch) -> None:
    q, scale, bias = _weights()
    m = int8_dynamic_linear(q, scale, bias)
    unpacked = _spy(monkeypatch, "linear_unpack")
    t = dynamic_linear_tensors(m)
    assert len(unpacked) == 1  # weight() and bias() unpacked the whole weight each
    assert torch.equal(t["weight_int8"], q) and torch.equal(t["bias"], bias)
    assert torch.allclose(t["weight_scale"], scale)


def test_the_quantize_pass_keeps_its_tensors_so_packing_unpacks_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 10))
    quantize.apply(model, quantize.QuantizeConfig(type="quantize"), PassContext(seed=0, index=0))
    x = torch.randn(8, 64)
    unpacked = _spy(monkeypatch, "linear_unpack")
    pack(model, tmp_path / "s.ccz")
    back, _ = load_packed(tmp_path / "s.ccz")
    assert unpacked == []  # both layers' int8 weights were read from the pass's tensors
    assert torch.equal(model(x), back(x))
    # a reloaded student keeps nothing (1 byte per weight) and is read by unpacking
    assert dynamic_linear_tensors(back[0]) and len(unpacked) == 1


def test_weights_set_again_are_unpacked_not_read_from_the_kept_tensors() -> None:
    q, scale, bias = _weights()
    m = int8_dynamic_linear(q, scale, bias, keep=True)
    assert dynamic_linear_tensors(m)["weight_int8"] is not None
    q2 = torch.zeros_like(q)
    qw = torch._make_per_channel_quantized_tensor(
        q2, scale.double(), torch.zeros(96, dtype=torch.long), 0
    )
    m.set_weight_bias(qw, None)
    t = dynamic_linear_tensors(m)
    assert torch.equal(t["weight_int8"], q2) and "bias" not in t


def test_a_reload_frees_each_decoded_int8_weight_before_fbgemm_packs_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Every decoded int8 weight alive while a layer is prepacked is one more copy at the
    reload's peak: the layer's own (torch already has its quantized copy) and every layer
    built before it are freed; only the layers still to build hold theirs."""
    import weakref

    from ci_compress.layers import int8
    from ci_compress.packing import encoding

    torch.manual_seed(0)
    model = nn.Sequential(*(nn.Linear(64, 64) for _ in range(4)))
    quantize.apply(model, quantize.QuantizeConfig(type="quantize"), PassContext(seed=0, index=0))
    pack(model, tmp_path / "s.ccz")

    decoded: list[weakref.ref[torch.Tensor]] = []
    real_decode, real_build = encoding.decode, int8._dynamic_linear

    def decode(name: str, entry: dict[str, Any], read: Any) -> torch.Tensor:
        t = real_decode(name, entry, read)
        if name.endswith("weight_int8"):
            decoded.append(weakref.ref(t))
        return t

    alive: list[int] = []

    def build(qw: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
        alive.append(sum(r() is not None for r in decoded))
        return real_build(qw, bias)

    monkeypatch.setattr(encoding, "decode", decode)
    monkeypatch.setattr(int8, "_dynamic_linear", build)
    back, _ = load_packed(tmp_path / "s.ccz")
    assert len(decoded) == 4
    assert alive == [3, 2, 1, 0]  # all four, at every layer, before
    x = torch.randn(8, 64)
    assert torch.equal(model(x), back(x))
