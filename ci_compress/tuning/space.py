"""The search space: which pass and ship options vary, checked as a run would check them.

A space key names one option of one pass, ``passes[<i>].<option>``, in the config's
own ``passes:`` list (or in the profile's list when ``tune.profile`` is set), or one
option of the ``ship:`` section, ``ship.<option>`` (``runtime``, ``quantize``,
``calibration_batches``, ...). Each candidate value a key can take (both ends of a
range, every choice) is put into a copy of the config and validated with
:func:`ci_compress.config.parse_config` and :func:`ci_compress.stages.check` (what
``ci-compress run`` rejects before loading a model), so a bad entry fails at load with
the field's own message, and any option of any registered pass or of ``ship`` (today's
or one added later, e.g. a new ``ship.quantize`` value) can be searched without code here.

Options that are valid only together (``ship.quantize: int8`` needs ``ship.runtime``
onnxruntime or openvino) are checked jointly: a value is accepted when some combination
with the other searched values is valid (and refused, naming its key, when none is);
a trial that samples an invalid combination is pruned without being run
(:mod:`ci_compress.tuning.study`).

Profiles are starting spaces for a target (README, "Tuning"). They may name passes or
options this version does not have: those are left out and listed in
:attr:`Space.skipped`, never silently.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic_core import to_jsonable_python

from ci_compress import stages
from ci_compress.config import (
    CompressConfig,
    LoadedConfig,
    ShipConfig,
    parse_config,
    to_mapping,
)
from ci_compress.config.tune import SpaceEntry, parse_key
from ci_compress.errors import ConfigError
from ci_compress.passes.registry import PASSES

if TYPE_CHECKING:
    import optuna

    from ci_compress.config import CompressConfig, LoadedConfig
    from ci_compress.config.tune import SpaceEntry, TuneConfig

_PRIMITIVE = (bool, int, float, str, type(None))
# joint check of dependent options: at most this many combinations are tried per value
_MAX_COMBINATIONS = 256


# ---------------------------------------------------------------- profiles


@dataclass(frozen=True)
class ProfilePass:
    """One pass of a profile: its base options (must be accepted), the searched ones,
    and ``extras`` that are used when the pass knows them and recorded as skipped if not.

    ``not_after`` names pass types that leave this pass nothing to do when one of them
    runs before it in a trial (``quantize`` after ``cluster``: the clustered layers are
    no longer the Linear/Conv layers int8 takes). Such a trial leaves the pass out: run,
    it would change nothing, which is an error, and the trial would be lost.
    """

    type: str
    options: Mapping[str, Any]
    space: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    extras: Mapping[str, Any] = field(default_factory=dict)
    optional: bool = False
    label: str = ""
    not_after: tuple[str, ...] = ()


@dataclass(frozen=True)
class Profile:
    name: str
    favours: str
    passes: tuple[ProfilePass, ...]
    objective: str = "size"
    weights: Mapping[str, float] = field(default_factory=lambda: {"size": 1.0, "latency": 0.0})
    ship: Mapping[str, Any] = field(default_factory=dict)
    # searched ship options (choices); values this machine or config cannot run (a
    # runtime whose extra is not installed, int8 without data.calibration) are left out
    ship_space: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)


PROFILES: dict[str, Profile] = {
    "arm-edge": Profile(
        name="arm-edge",
        favours="small and fast on ARM CPUs: int8 with the qnnpack engine, weight sharing (clustering) and moderate pruning",
        passes=(
            ProfilePass(
                "prune", {"amount": 0.5}, {"amount": {"low": 0.2, "high": 0.8}}, optional=True
            ),
            ProfilePass(
                "cluster",
                {"bits": 6},
                {"bits": {"choices": [4, 5, 6, 8]}},
                optional=True,
                label="weight sharing",
            ),
            ProfilePass(
                "quantize",
                {"scheme": "int8-dynamic"},
                {"scheme": {"choices": ["int8-dynamic", "int8-weight-only"]}},
                extras={"engine": "qnnpack"},
                not_after=("cluster",),  # weight sharing or int8, per trial
            ),
        ),
        objective="mix",
        weights={"size": 0.5, "latency": 0.5},
        ship_space={"runtime": ("torch", "onnxruntime"), "quantize": ("none", "int8")},
    ),
    "cpu-x86": Profile(
        name="cpu-x86",
        favours="latency on x86 servers: int8 (dynamic or static) with fast kernels and structured pruning, which removes whole rows that dense kernels then skip",
        passes=(
            ProfilePass(
                "prune",
                {"amount": 0.25, "structured": True},
                {"amount": {"low": 0.05, "high": 0.5}},
                optional=True,
                label="structured pruning",
            ),
            # optional: on a small model int8 can be slower than fp32; let latency decide
            ProfilePass(
                "quantize",
                {"scheme": "int8-dynamic"},
                {"scheme": {"choices": ["int8-dynamic", "int8-static"]}},
                optional=True,
            ),
        ),
        objective="mix",
        weights={"size": 0.3, "latency": 0.7},
        # where the student is served decides its speed as much as the passes do: on an
        # x86 host without VNNI torch int8 was slower than fp32, OpenVINO int8 2.2x faster
        ship_space={
            "runtime": ("torch", "onnxruntime", "openvino"),
            "quantize": ("none", "int8"),
        },
    ),
    "size-first": Profile(
        name="size-first",
        favours="the fewest shipped bytes: aggressive pruning, clustering to few distinct weights, int8, and the strongest packing",
        passes=(
            ProfilePass("prune", {"amount": 0.7}, {"amount": {"low": 0.5, "high": 0.95}}),
            ProfilePass("cluster", {"bits": 4}, {"bits": {"low": 2, "high": 6}}, optional=True),
            # 2-6 bit clusters or int8, per trial (int8 finds nothing left after clustering)
            ProfilePass(
                "quantize", {"scheme": "int8-dynamic"}, optional=True, not_after=("cluster",)
            ),
        ),
        objective="size",
        ship={"zstd_level": 22},
    ),
}


# ---------------------------------------------------------------- the resolved space


@dataclass(frozen=True)
class Dimension:
    """One searched option: the Optuna parameter and how to turn it into a value."""

    name: str  # the space key, also the Optuna parameter name
    index: int | None  # the pass index; None for a ship.<option>
    option: str
    low: float | int | None = None
    high: float | int | None = None
    step: float | int | None = None
    log: bool = False
    is_int: bool = False
    choices: tuple[Any, ...] | None = None

    @property
    def in_ship(self) -> bool:
        return self.index is None

    @property
    def encoded(self) -> bool:
        """Non-scalar choices (lists, mappings) are searched by their index."""
        return self.choices is not None and not all(isinstance(c, _PRIMITIVE) for c in self.choices)

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.choices is not None:
            if self.encoded:
                i = trial.suggest_categorical(self.name, list(range(len(self.choices))))
                return copy.deepcopy(self.choices[int(i)])
            return trial.suggest_categorical(self.name, list(self.choices))
        assert self.low is not None and self.high is not None
        if self.is_int:
            return trial.suggest_int(
                self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log
            )
        value = trial.suggest_float(
            self.name, float(self.low), float(self.high), step=self.step, log=self.log
        )
        # Readable configs: without a step, float options are searched to 4 decimals.
        return value if self.step else min(max(round(value, 4), self.low), self.high)

    def param_for(self, value: Any) -> Any | None:
        """The Optuna parameter value that yields ``value``, or None if outside the space."""
        if self.choices is not None:
            for i, c in enumerate(self.choices):
                if c == value:
                    return i if self.encoded else c
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        assert self.low is not None and self.high is not None
        if not self.low <= value <= self.high:
            return None
        return int(value) if self.is_int else float(value)

    def candidates(self) -> list[Any]:
        if self.choices is not None:
            return list(self.choices)
        return [self.low, self.high]

    def describe(self) -> str:
        if self.choices is not None:
            return "one of " + ", ".join(map(repr, self.choices))
        scale = ", log" if self.log else ""
        step = f", step {self.step}" if self.step else ""
        return f"{self.low} .. {self.high}{step}{scale}"


@dataclass
class Space:
    """The passes (and ship section) a trial starts from, what varies, and what a
    profile had to leave out."""

    base: dict[str, Any]  # the config (tune section removed) as a plain mapping
    passes: list[dict[str, Any]]  # base pass mappings, in order
    dimensions: list[Dimension]
    optional: tuple[int, ...]
    objective: str
    weights: dict[str, float]
    profile: str | None = None
    skipped: list[str] = field(default_factory=list)
    base_dir: Path = Path(".")  # the config's folder: factories and files resolve from it
    # pass index -> pass types that, run before it, leave it nothing to do (a profile's
    # ProfilePass.not_after): a trial with one of them enabled leaves the pass out
    not_after: dict[int, tuple[str, ...]] = field(default_factory=dict)

    def sample(self, trial: optuna.Trial) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The pass list and the searched ship options of one trial (Optuna suggests
        every value). The ship mapping holds only the searched options (empty without
        ``ship.*`` dimensions); the rest of ``ship:`` is the config's. A pass that an
        earlier pass of the trial leaves nothing to do (:attr:`not_after`) is left out,
        its options not suggested."""
        out: list[dict[str, Any]] = []
        for i, base in enumerate(self.passes):
            if any(p["type"] in self.not_after.get(i, ()) for p in out):
                continue
            if i in self.optional and not trial.suggest_categorical(
                f"passes[{i}].enabled", [True, False]
            ):
                continue
            opts = copy.deepcopy(base)
            for d in self.dimensions:
                if d.index == i:
                    opts[d.option] = d.suggest(trial)
            out.append(opts)
        ship = {d.option: d.suggest(trial) for d in self.dimensions if d.in_ship}
        return out, ship

    def base_params(self) -> dict[str, Any]:
        """Optuna parameters reproducing the base config (the first trial tries it)."""
        params: dict[str, Any] = {f"passes[{i}].enabled": True for i in self.optional}
        built = self.build(self.passes)
        full = [p.model_dump(mode="json") for p in built.passes]
        for d in self.dimensions:
            if d.index is None:  # every ship value, defaults too (dumps leave those out)
                value = to_jsonable_python(getattr(built.ship, d.option, None))
            else:
                value = full[d.index].get(d.option)
            p = d.param_for(value)
            if p is not None:
                params[d.name] = p
        return params

    def config_mapping(
        self, passes: list[dict[str, Any]], ship: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """The config file a trial stands for, sections in the usual order."""

        full = {**copy.deepcopy(self.base), "passes": copy.deepcopy(passes)}
        if ship:
            full["ship"] = {**full.get("ship", {}), **copy.deepcopy(dict(ship))}
        return {k: full[k] for k in CompressConfig.model_fields if k in full}

    def build(
        self, passes: list[dict[str, Any]], ship: Mapping[str, Any] | None = None
    ) -> CompressConfig:
        """Validate a trial's config exactly as ``ci-compress run`` would read it."""

        return parse_config(self.config_mapping(passes, ship), origin="<trial config>")

    def validate(
        self, passes: list[dict[str, Any]], ship: Mapping[str, Any] | None = None
    ) -> CompressConfig:
        """:meth:`build`, then what a run rejects before loading a model
        (:func:`ci_compress.stages.check`: data a pass needs, the serving runtime against
        the passes, installed extras). Raises the run's own ConfigError."""

        config = self.build(passes, ship)
        self.check(config)
        return config

    def check(self, config: CompressConfig) -> None:
        """What a run rejects in a read config before it loads a model."""
        stages.check(LoadedConfig(config=config, source=None, base_dir=self.base_dir, sha256=""))


def _check(space: Space, index: int | None, option: str | None, value: Any) -> ConfigError | None:
    err, _ = _try(space, [] if option is None else [(index, option, value)])
    return err


def _try(
    space: Space, changes: list[tuple[int | None, str, Any]]
) -> tuple[ConfigError | None, bool]:
    """The error of the config with ``changes`` (pass index or None for ship, option,
    value; option ``enabled`` False switches an optional pass off) made, None if it is
    valid; and whether it got past reading (so the error is about the combination, not
    about one field)."""
    passes = copy.deepcopy(space.passes)
    ship: dict[str, Any] = {}
    off = set()
    for index, option, value in changes:
        if index is None:
            ship[option] = value
        elif option == "enabled":
            if value is False:
                off.add(index)
        else:
            passes[index][option] = value
    passes = [p for i, p in enumerate(passes) if i not in off]
    try:
        config = space.build(passes, ship)
    except ConfigError as e:
        return e, False
    try:
        space.check(config)
    except ConfigError as e:
        return e, True
    return None, True


def _others(
    space: Space, dims: list[Dimension], d: Dimension
) -> Iterator[list[tuple[int | None, str, Any]]]:
    """Values of the other searched options to try beside a value of ``d``: their
    combinations (both ends of a range, every choice; optional passes on, then off; at
    most _MAX_COMBINATIONS). A searched option never keeps the config's own value
    unless it is a candidate."""
    toggles = [
        Dimension(f"passes[{i}].enabled", i, "enabled", choices=(True, False))
        for i in space.optional
        if i != d.index
    ]
    others = [o for o in dims if o.name != d.name] + toggles
    combos = itertools.product(*(o.candidates() for o in others))
    for values in itertools.islice(combos, _MAX_COMBINATIONS):
        yield [(o.index, o.option, v) for o, v in zip(others, values, strict=True)]


def _fits(space: Space, dims: list[Dimension], d: Dimension, value: Any) -> ConfigError | None:
    """None when ``value`` of ``d`` is valid with some combination of the other
    searched options and optional passes (``ship.quantize: int8`` beside a searched
    ``ship.runtime``, ``importance: taylor`` beside a searched ``structured``,
    ``ship.runtime: onnxruntime`` with an optional torch int8 ``quantize`` pass off).
    Else the error that says most: the first one from a combination that was read but
    refused by the run's checks (data a value needs, a runtime that cannot serve a
    pass), or else the first one."""
    first: ConfigError | None = None
    checked: ConfigError | None = None
    for others in _others(space, dims, d):
        err, read = _try(space, [*others, (d.index, d.option, value)])
        if err is None:
            return None
        first = first or err
        if read:
            checked = checked or err
    return checked or first


def resolve(loaded: LoadedConfig, tune: TuneConfig) -> Space:
    """Build and validate the search space of a config's ``tune:`` section."""

    cfg = loaded.config
    base = to_mapping(cfg, exclude_unset=True)  # ${NAME} references stay references
    passes: list[dict[str, Any]] = base.pop("passes", [])
    base.pop("tune", None)
    objective: str = tune.objective
    weights = tune.weights.model_dump()
    skipped: list[str] = []
    dims: list[Dimension] = []
    optional: list[int] = []
    not_after: dict[int, tuple[str, ...]] = {}

    if tune.profile is not None:
        prof = PROFILES[tune.profile]
        if "objective" not in tune.model_fields_set:
            objective = prof.objective
        if "weights" not in tune.model_fields_set:
            weights = dict(prof.weights)
        if prof.ship:
            base["ship"] = {**base.get("ship", {}), **prof.ship}
        passes = []
        probe = Space(base, [], [], (), objective, weights, base_dir=loaded.base_dir)
        for pp in prof.passes:
            label = f"{pp.type}" + (f" ({pp.label})" if pp.label else "")
            if pp.type not in PASSES:
                skipped.append(f"{label}: pass {pp.type!r} is not registered in this ci-compress")
                continue
            known = PASSES[pp.type].Config.model_fields
            missing = [k for k in pp.options if k not in known]
            if missing:
                skipped.append(
                    f"{label}: pass {pp.type!r} has no option {', '.join(map(repr, missing))} in this ci-compress"
                )
                continue
            opts: dict[str, Any] = {"type": pp.type, **pp.options}
            for k, v in pp.extras.items():
                if k in known:
                    opts[k] = v
                else:
                    skipped.append(f"{label}: option {k}={v!r} (not known to pass {pp.type!r})")
            probe.passes = [opts]
            err = _check(probe, 0, None, None)
            if err is not None:
                skipped.append(f"{label}: {err.message}")
                continue
            idx = len(passes)
            passes.append(opts)
            if pp.optional:
                optional.append(idx)
            if pp.not_after:
                not_after[idx] = pp.not_after
            for option, spec in pp.space.items():
                dim = _dimension(f"passes[{idx}].{option}", idx, option, spec)
                if dim.choices is not None:
                    ok = []
                    for c in dim.choices:
                        e = _check(probe, 0, option, c)
                        if e is None:
                            ok.append(c)
                        else:
                            skipped.append(f"{label}: {option}={c!r} ({e.message})")
                    if len(ok) < 2:
                        continue
                    dim = Dimension(dim.name, idx, option, choices=tuple(ok))
                dims.append(dim)

    space = Space(
        base=base,
        passes=passes,
        dimensions=[],
        optional=(),
        objective=objective,
        weights=weights,
        profile=tune.profile,
        skipped=skipped,
        base_dir=loaded.base_dir,
        not_after=not_after,
    )
    for i in tune.optional_passes:
        if not 0 <= i < len(passes):
            raise ConfigError(
                f"pass index {i} is out of range: there are {len(passes)} passes",
                path="tune.optional_passes",
            )
    space.optional = tuple(sorted({*optional, *tune.optional_passes}))
    user = {name: _dimension(name, *parse_key(name), entry) for name, entry in tune.space.items()}
    ship_dims = []
    if tune.profile is not None:
        for option, values in PROFILES[tune.profile].ship_space.items():
            name = f"ship.{option}"
            if name not in user and option in ShipConfig.model_fields:
                ship_dims.append(Dimension(name, None, option, choices=tuple(values)))
    dims = [d for d in dims if d.name not in user] + ship_dims + list(user.values())
    for d in ship_dims:  # a profile's ship values this config or machine cannot run
        ok = []
        for value in d.candidates():
            err = _fits(space, dims, d, value)
            if err is None:
                ok.append(value)
            else:
                skipped.append(f"{d.name}={value!r} ({err.message})")
        dims.remove(d)
        if len(ok) > 1:
            dims.append(Dimension(d.name, None, d.option, choices=tuple(ok)))
    for d in user.values():
        if d.index is not None and d.index >= len(passes):
            raise ConfigError(
                f"there is no pass {d.index}: the {'profile' if tune.profile else 'config'} has {len(passes)} passes"
                + (f" ({', '.join(p['type'] for p in passes)})" if passes else ""),
                path=f"tune.space.{d.name}",
            )
    for d in user.values():
        for value in d.candidates():
            err = _fits(space, dims, d, value)
            if err is not None:
                raise ConfigError(
                    f"{value!r} does not fit the {'pass' if d.index is not None else 'config'}: {err.message}",
                    path=f"tune.space.{d.name}",
                    hint=err.hint,
                ) from None
    space.dimensions = sorted(dims, key=_order)
    if not space.dimensions and not space.optional:
        raise ConfigError(
            "nothing to search: add tune.space entries (passes[<i>].<option> or ship.<option>: {low, high} or {choices}), tune.optional_passes or a tune.profile",
            path="tune",
        )
    return space


def _order(d: Dimension) -> tuple[int, int, str]:
    """Passes in order, then ship options in the config's field order."""
    if d.index is not None:
        return (0, d.index, d.option)
    fields = list(ShipConfig.model_fields)
    return (1, fields.index(d.option) if d.option in fields else len(fields), d.option)


def _dimension(
    name: str, index: int | None, option: str, spec: SpaceEntry | Mapping[str, Any]
) -> Dimension:

    entry = spec if isinstance(spec, SpaceEntry) else SpaceEntry.model_validate(dict(spec))
    if entry.choices is not None:
        return Dimension(name, index, option, choices=tuple(entry.choices))
    return Dimension(
        name,
        index,
        option,
        low=entry.low,
        high=entry.high,
        step=entry.step,
        log=entry.log,
        is_int=entry.is_int,
    )
