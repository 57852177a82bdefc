"""A model factory that needs a credential (tests only): the demo MLP, built only when
``model.factory_kwargs.token`` is the real value of ``FACTORY_TOKEN``.

It proves the code that uses an interpolated value receives the value, not its
``${NAME}`` template.
"""

from __future__ import annotations

import os

from torch import nn

from ci_compress.demo.models import digits_mlp


def digits_mlp_with_token(
    token: str, hidden: tuple[int, ...] | list[int] = (256, 128)
) -> nn.Module:
    if str(token) != os.environ["FACTORY_TOKEN"] or f"{token}" != os.environ["FACTORY_TOKEN"]:
        raise ValueError("the factory was not given the real token")
    return digits_mlp(hidden)
