"""The base of every config object: frozen, no unknown keys.

One definition for the whole config tree (``config`` and its ``tune`` section both build on
it). Unknown keys are rejected by pydantic here and, with a did-you-mean, by the config
loader before pydantic sees them.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Frozen(BaseModel):
    """Frozen, no unknown keys, no infinite or NaN numbers (``.inf`` is valid YAML)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)
