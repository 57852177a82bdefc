"""The ``tune:`` section of a config: search space, objective, budget, storage.

These models build on the one frozen, no-unknown-keys base (:mod:`ci_compress.frozen`);
unknown keys get a did-you-mean from the config loader, which walks every nested model.

Whether a space entry fits its pass is checked later, by building the trial's config
and validating it through :func:`ci_compress.config.parse_config`
(:func:`ci_compress.tuning.space.resolve`), so every registered pass option can be
searched without this module knowing the passes.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from ci_compress.errors import ConfigError
from ci_compress.frozen import Frozen

Scalar = bool | int | float | str | None
_KEY_RE = re.compile(r"^(?:passes\[(\d+)\]|ship)\.([A-Za-z_]\w*)$")


def parse_key(key: str) -> tuple[int | None, str]:
    """``passes[1].amount`` -> ``(1, "amount")``, ``ship.runtime`` -> ``(None, "runtime")``;
    anything else is a ConfigError."""
    m = _KEY_RE.match(key)
    if not m:
        raise ConfigError(
            f"bad key {key!r}: write passes[<index>].<option> or ship.<option>, e.g. passes[0].amount or ship.runtime",
            path="tune.space",
        )
    if m.group(1) is None:
        return None, m.group(2)
    if m.group(2) in {"type", "enabled"}:
        raise ConfigError(
            f"{key!r} cannot be searched: list the pass index in tune.optional_passes to switch it on and off",
            path="tune.space",
        )
    return int(m.group(1)), m.group(2)


class SpaceEntry(Frozen):
    """One searched option: a range (``low``/``high``) or a list of ``choices``."""

    low: int | float | None = Field(None, description="Smallest value of a range.")
    high: int | float | None = Field(None, description="Largest value of a range.")
    step: int | float | None = Field(
        None, gt=0, description="Grid step of a range (ints default to 1)."
    )
    log: bool = Field(False, description="Sample the range on a log scale.")
    choices: tuple[Any, ...] | None = Field(
        None, min_length=1, description="Values to choose from (any YAML values)."
    )

    @model_validator(mode="after")
    def _range_or_choices(self) -> SpaceEntry:
        ranged = self.low is not None or self.high is not None
        if ranged == (self.choices is not None):
            raise ValueError("give either low and high, or choices")
        if ranged:
            if self.low is None or self.high is None:
                raise ValueError("a range needs both low and high")
            if self.low > self.high:
                raise ValueError(f"low {self.low} is above high {self.high}")
            if self.log and self.low <= 0:
                raise ValueError("a log range needs low > 0")
        return self

    @property
    def is_int(self) -> bool:
        vals = (self.low, self.high, self.step)
        return all(v is None or (isinstance(v, int) and not isinstance(v, bool)) for v in vals)


class ObjectiveWeights(Frozen):
    size: float = Field(1.0, ge=0, description="Weight of shipped bytes / teacher bytes.")
    latency: float = Field(0.0, ge=0, description="Weight of student / teacher median latency.")

    @model_validator(mode="after")
    def _some_weight(self) -> ObjectiveWeights:
        if self.size == 0 and self.latency == 0:
            raise ValueError("at least one weight must be above 0")
        return self


class TuneConfig(Frozen):
    """Find the most compressed student that still passes the gate."""

    profile: Literal["cpu-x86", "arm-edge", "size-first"] | None = Field(
        None,
        description="Start from a target profile's passes and space (README, Tuning); space entries below are added on top.",
    )
    space: dict[str, SpaceEntry] = Field(
        default_factory=dict,
        description="Searched options, keyed passes[<i>].<option> or ship.<option> (runtime, quantize, ...): {low, high[, step, log]} or {choices: [...]}; a bare list [a, b, ...] is short for {choices: [a, b, ...]}.",
    )
    optional_passes: tuple[int, ...] = Field(
        (), description="Indices of passes the tuner may switch off."
    )
    objective: Literal["size", "latency", "mix"] = Field(
        "size",
        description="Minimise shipped bytes (size), student latency (latency) or a weighted mix of both ratios to the teacher (mix).",
    )
    weights: ObjectiveWeights = Field(
        ObjectiveWeights(), description="Weights of the mix objective."
    )
    max_trials: int = Field(
        20,
        ge=1,
        le=100000,
        description="Trials in the whole study, across processes, CI jobs and resumed runs.",
    )
    timeout_s: float | None = Field(
        None, gt=0, description="Stop starting new trials after this many seconds (per process)."
    )
    seed: int | None = Field(None, ge=0, description="Sampler seed; default runtime.seed.")
    startup_trials: int = Field(
        4, ge=1, description="Random trials before the TPE sampler starts modelling."
    )
    storage: str | None = Field(
        None,
        description="Optuna storage URL shared by all workers (postgresql://..., sqlite:///...); default sqlite file ci-compress-tune.db beside the config.",
    )
    study_name: str | None = Field(
        None,
        min_length=1,
        description="Study name; the same name continues the same study. Default: the config file's stem.",
    )
    dir: str = Field(
        "ci-compress-tune",
        min_length=1,
        description="Folder for trial students, tune-report.md and pareto.png.",
    )
    output: str = Field(
        "tuned.yaml",
        min_length=1,
        description="Where the best passing config is written (relative to the config's folder).",
    )
    prune_hopeless: bool = Field(
        True,
        description="Stop a trial right after its accuracy is measured when it already fails an accuracy threshold (skips latency).",
    )

    @field_validator("space", mode="before")
    @classmethod
    def _bare_lists(cls, value: Any) -> Any:
        """``key: [a, b]`` is short for ``key: {choices: [a, b]}``."""
        if isinstance(value, dict):
            return {k: {"choices": v} if isinstance(v, list) else v for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _keys(self) -> TuneConfig:

        for key in self.space:
            parse_key(key)
        return self
