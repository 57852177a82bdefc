"""Low-rank factorization of Linear layers and 1x1 convolutions by truncated SVD.

``W (out x in) ~= U_r S_r V_r^T`` becomes two layers: ``Linear(in, r, bias=False)`` with
weight ``sqrt(S_r) V_r^T`` followed by ``Linear(r, out)`` with ``U_r sqrt(S_r)`` and the
original bias (1x1 convs become two 1x1 convs, the first keeping stride and padding).
The rank is the smallest that keeps ``energy`` of the squared singular values, a
``rank_ratio`` of the largest possible rank, or a fixed ``rank``. A layer where
``r * (in + out) >= in * out`` is left as it is (factorizing would not save parameters)
and recorded as skipped. The result is ``nn.Sequential`` of ordinary layers, so every
other pass and the packed format handle it unchanged.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from ci_compress.errors import ConfigError
from ci_compress.passes.base import PassConfig, PassContext, PassRecord, select, set_submodule

if TYPE_CHECKING:
    from torch import nn

TYPE = "lowrank"


class LowrankConfig(PassConfig):
    """Factorize Linear layers (and 1x1 convs) into two thinner ones by SVD."""

    type: Literal["lowrank"] = "lowrank"
    energy: float | None = Field(
        None, gt=0, le=1, description="Keep the smallest rank holding this fraction of sum(s^2)."
    )
    rank_ratio: float | None = Field(
        None, gt=0, le=1, description="Rank = ceil(ratio * min(in, out))."
    )
    rank: int | None = Field(None, ge=1, description="A fixed rank for every selected layer.")

    @model_validator(mode="after")
    def _one_rule(self) -> LowrankConfig:
        given = [k for k in ("energy", "rank_ratio", "rank") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of energy, rank_ratio, rank (got {', '.join(given) or 'none'})"
            )
        return self


Config = LowrankConfig


def _candidates(
    model: nn.Module, chosen: list[tuple[str, nn.Module]]
) -> list[tuple[str, nn.Module]]:
    from torch import nn

    return [
        (n, m)
        for n, m in chosen
        if isinstance(m, nn.Linear)
        or (m.kernel_size == (1, 1) and m.groups == 1 and m.padding_mode == "zeros")
    ]


def _rank(s: Any, config: LowrankConfig, name: str, where: str) -> int:
    import torch

    full = int(s.numel())
    if config.rank is not None:
        if config.rank > full:
            raise ConfigError(
                f"must be at most {full} (the largest rank of layer {name!r}), got {config.rank}",
                path=f"{where}.rank",
                hint="lower rank, or exclude the layer",
            )
        return config.rank
    if config.rank_ratio is not None:
        return max(1, math.ceil(config.rank_ratio * full))
    assert config.energy is not None  # the validator guarantees one rule
    e = torch.cumsum(s.double() ** 2, 0)
    e = e / e[-1]
    return min(
        full, int(torch.searchsorted(e, torch.tensor(config.energy - 1e-12, dtype=e.dtype))) + 1
    )


def apply(model: nn.Module, config: LowrankConfig, ctx: PassContext) -> PassRecord:
    """Replace each selected layer where it saves parameters by two factor layers."""
    import torch
    from torch import nn

    where = f"passes[{ctx.index}]"
    chosen = _candidates(
        model, select(model, config.include, config.exclude, (nn.Linear, nn.Conv2d), path=where)
    )
    ranks: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    for name, layer in chosen:
        weight: torch.Tensor = layer.weight  # type: ignore[assignment]
        w = weight.detach().double().reshape(weight.shape[0], -1)
        out_f, in_f = w.shape
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        r = _rank(s, config, name, where)
        if r * (in_f + out_f) >= in_f * out_f:
            skipped[name] = f"rank {r} of {min(in_f, out_f)} would not reduce parameters"
            continue
        root = s[:r].sqrt()
        first = (root[:, None] * vh[:r]).float()
        second = (u[:, :r] * root[None, :]).float()
        bias = layer.bias is not None
        if isinstance(layer, nn.Linear):
            a: nn.Module = nn.Linear(in_f, r, bias=False)
            b: nn.Module = nn.Linear(r, out_f, bias=bias)
            shape_a: tuple[int, ...] = (r, in_f)
            shape_b: tuple[int, ...] = (out_f, r)
        else:
            a = nn.Conv2d(in_f, r, 1, stride=layer.stride, padding=layer.padding, bias=False)  # type: ignore[arg-type]
            b = nn.Conv2d(r, out_f, 1, bias=bias)
            shape_a, shape_b = (r, in_f, 1, 1), (out_f, r, 1, 1)
        with torch.no_grad():
            a.weight.copy_(first.view(shape_a))  # type: ignore[operator]
            b.weight.copy_(second.view(shape_b))  # type: ignore[operator]
            if bias:
                b.bias.copy_(layer.bias)  # type: ignore[operator,arg-type]
        kept = float((s[:r] ** 2).sum() / (s**2).sum())
        set_submodule(model, name, nn.Sequential(a, b))
        ranks[name] = {"rank": r, "full_rank": min(in_f, out_f), "energy": round(kept, 6)}
    return PassRecord(
        name=TYPE,
        index=ctx.index,
        options=config.model_dump(mode="json"),
        modules=list(ranks),
        details={"ranks": ranks, "skipped": skipped},
    )
