"""YAML config -> typed, validated, frozen config objects.

Validation happens once, here. Every error is a :class:`~ci_compress.errors.ConfigError`
naming the YAML path of the field (``passes[1].amount``), the value seen and what is
expected. Unknown keys are errors with a did-you-mean: a misspelt threshold would
otherwise silently switch a check off.

The pass section is built from the pass registry (:data:`ci_compress.passes.registry.PASSES`),
so adding a pass adds its config, its validation and its JSON Schema in one place.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import annotated_types
import yaml
from pydantic import BaseModel, Field, SerializeAsAny, ValidationError, model_validator

from ci_compress import redaction
from ci_compress.config.reading import load_yaml
from ci_compress.config.task import (
    MetricThresholds,
    TaskConfig,
    check_metric_thresholds,
)
from ci_compress.config.tune import TuneConfig
from ci_compress.errors import ConfigError
from ci_compress.files import text_sha256
from ci_compress.frozen import Frozen
from ci_compress.passes.base import PassConfig
from ci_compress.passes.registry import PASSES
from ci_compress.refs import FACTORY_RE

CONFIG_VERSION = 1
REPORT_FILES = (
    "report.json",
    "report.md",
    "junit.xml",
    "manifest.json",
    "explain.json",
    "explain.md",
    "sensitivity.png",
)
"""Files the gate writes into the report folder beside the shipped student."""
_SHA256_RE = r"^[0-9a-fA-F]{64}$"
_MODEL_URI_RE = r"^(models:/[^/@]+(@[\w-]+|/[0-9]+)(/.+)?|runs:/[0-9A-Za-z_-]+/.+)$"


def _is(default: Any) -> Any:
    """``exclude_if`` for a field added after 0.1: left out of dumps while at its default,
    so existing reports, MLflow params and manifests do not change."""
    return lambda value: value == default


def _exactly_one(model: Frozen, *names: str) -> None:
    """A source given one way: exactly one of the fields ``names`` is set (non-empty)."""
    given = [k for k in names if getattr(model, k)]
    if len(given) != 1:
        raise ValueError(
            f"give exactly one of {', '.join(names)} (got {', '.join(given) or 'none'})"
        )


class HuggingFaceConfig(Frozen):
    """How a Hugging Face ``save_pretrained`` folder is loaded (needs ``ci-compress[hf]``)."""

    auto_class: str = Field(
        "AutoModel",
        pattern=r"^[A-Za-z_]\w*$",
        description="The transformers class that loads the folder: AutoModel (hidden states), AutoModelForSequenceClassification, AutoModelForCausalLM, ... or a model class such as BertModel.",
    )


class ModelSource(Frozen):
    """Where the original (teacher) model comes from: exactly one of path, url, uri."""

    path: str | None = Field(
        None,
        description="Local model file: TorchScript (.pt/.pth), state_dict (.pt with weights only, or .safetensors), a ci-compress packed file (.ccz), a torch.export program (.pt2), or a Hugging Face save_pretrained folder (with config.json; see hf).",
    )
    url: str | None = Field(None, description="https URL of the model file; requires sha256.")
    uri: str | None = Field(
        None,
        pattern=_MODEL_URI_RE,
        description="MLflow model URI: models:/<name>@<alias>, models:/<name>/<version> or runs:/<run_id>/<path>; downloaded from the tracking server (mlflow.tracking_uri or MLFLOW_TRACKING_URI) into the report folder, then loaded like a file.",
    )
    sha256: str | None = Field(
        None,
        pattern=_SHA256_RE,
        description="Expected sha256 of the model file; required for url, checked for any source when given.",
    )
    factory: str | None = Field(
        None,
        pattern=FACTORY_RE,
        description="package.module:function returning an nn.Module to load a state_dict into.",
    )
    factory_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments for the factory."
    )
    allow_pickle: bool = Field(
        False,
        description="Allow loading a fully pickled module. A pickle runs code: only for files you trust.",
    )
    allow_http: bool = Field(
        False, description="Allow a plain http:// url (never for untrusted networks)."
    )
    max_download_bytes: int = Field(
        2 * 1024**3, ge=1, description="Refuse downloads larger than this."
    )
    output: str | int | None = Field(
        None,
        exclude_if=_is(None),
        description="Which part of a structured model output is measured: a key (logits, last_hidden_state) or an index. Unset: a tensor as is, a mapping's logits when present else its first tensor, a tuple's first element.",
    )
    hf: HuggingFaceConfig | None = Field(
        None,
        exclude_if=_is(None),
        description="For a Hugging Face folder in path: the transformers class to load it with (default AutoModel). Loaded offline, nothing is downloaded.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> ModelSource:
        _exactly_one(self, "path", "url", "uri")
        if self.url and not self.sha256:
            raise ValueError("url needs sha256: pin the download to the file you tested")
        if self.hf is not None and not self.path:
            raise ValueError(
                "model.hf: loads a Hugging Face folder given as model.path (a local folder)"
            )
        return self


InputNames = str | tuple[str, ...] | dict[str, str]


class DataSource(Frozen):
    """A dataset: exactly one of builtin, path, factory."""

    builtin: Literal["digits"] | None = Field(
        None,
        description="A dataset shipped with ci-compress's dependencies: digits (scikit-learn, 8x8 handwritten digits).",
    )
    split: Literal["train", "test"] = Field("test", description="For builtin sets: which split.")
    path: str | None = Field(
        None,
        description=".npz, .pt or .safetensors file holding named arrays (x and y unless inputs and target name others), or a folder of .npy arrays (x.npy, y.npy) or of shard folders holding them, read a batch at a time.",
    )
    factory: str | None = Field(
        None,
        pattern=FACTORY_RE,
        description="package.module:function returning an iterable of (inputs, target) batches: inputs a tensor, a tuple (positional arguments) or a dict (keyword arguments) of tensors; target a tensor or None.",
    )
    kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments for the factory."
    )
    limit: int | None = Field(
        None, ge=1, description="Use only the first N samples (fast local checks)."
    )
    inputs: InputNames = Field(
        "x",
        exclude_if=_is("x"),
        description="For path: the array(s) the model takes. One name (a single tensor), a list of names (positional arguments, in order), or a mapping argument: array (keyword arguments of forward, e.g. {input_ids: input_ids, attention_mask: attention_mask}).",
    )
    target: str | None = Field(
        "y",
        exclude_if=_is("y"),
        description="For path: the array holding the target (labels, values, token ids); null when the task needs none (embedding, language-model).",
    )

    @model_validator(mode="after")
    def _one_source(self) -> DataSource:
        _exactly_one(self, "builtin", "path", "factory")
        if not self.path and (self.inputs != "x" or self.target != "y"):
            which = "inputs" if self.inputs != "x" else "target"
            raise ValueError(
                f"{which}: names arrays in a data file (path); a factory yields (inputs, target) itself and builtin sets are fixed"
            )
        names = (
            [self.inputs]
            if isinstance(self.inputs, str)
            else list(self.inputs.values())
            if isinstance(self.inputs, dict)
            else list(self.inputs)
        )
        if not names or not all(names):
            raise ValueError("inputs: name at least one array")
        if self.target is not None and self.target in names:
            raise ValueError(
                f"target: {self.target!r} is also an input; the target is scored, not fed to the model"
            )
        return self


class DataConfig(Frozen):
    holdout: DataSource = Field(description="The held-out evaluation set.")
    train: DataSource | None = Field(
        None, description="Training data for passes that fine-tune or distill."
    )
    calibration: DataSource | None = Field(
        None, description="Calibration data for static quantization."
    )
    batch_size: int = Field(256, ge=1, description="Evaluation batch size.")


class Thresholds(Frozen):
    """Gate thresholds. Unset thresholds are not checked; at least one must be set."""

    max_accuracy_drop: float | None = Field(
        None,
        ge=0,
        le=100,
        description="Largest allowed top-1 accuracy drop, in percentage points (teacher - student).",
    )
    max_relative_accuracy_drop: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Largest allowed drop as a fraction of the teacher's accuracy.",
    )
    min_compression_ratio: float | None = Field(
        None, gt=0, description="Smallest allowed teacher file bytes / shipped student bytes."
    )
    max_size_bytes: int | None = Field(
        None, ge=1, description="Largest allowed shipped student file, in bytes."
    )
    max_latency_ratio: float | None = Field(
        None,
        gt=0,
        description="Largest allowed student latency / teacher latency: the median of the ratios of turns in which both ran (same batch and threads). Under decision: confident it is decided on the ratio's interval (pass, fail or inconclusive).",
    )
    max_accuracy_drop_vs_champion: float | None = Field(
        None,
        ge=-100,
        le=100,
        description="Largest allowed top-1 accuracy drop against the current champion (the version holding mlflow.alias), in percentage points (champion - candidate), both measured on this holdout; 0 = no worse than production, negative = must improve. Skipped (not failed) while no version holds the alias. Needs mlflow.registered_model.",
    )
    max_size_ratio_vs_champion: float | None = Field(
        None,
        gt=0,
        description="Largest allowed candidate file bytes / champion file bytes. Skipped while no version holds the alias. Needs mlflow.registered_model.",
    )

    decision: Literal["point", "confident"] = Field(
        "point",
        description="point: compare the measured accuracy drop (and latency ratio) with the limit. confident: fail only when the figure exceeds the limit with `confidence` (the whole interval is above it: the paired bootstrap of the accuracy drop, the order-statistic interval of the latency ratio); an interval that straddles the limit is inconclusive (exit code 5 unless `inconclusive` says otherwise).",
    )
    confidence: float = Field(
        0.95,
        gt=0.5,
        lt=1,
        description="Two-sided confidence level of the accuracy-drop and latency-ratio intervals (reported under either rule).",
    )
    inconclusive: Literal["fail", "pass", "warn"] = Field(
        "fail",
        description="What an inconclusive confident gate does: fail blocks (exit 5), warn passes with a warning, pass passes.",
    )
    bootstrap_resamples: int = Field(
        10_000,
        ge=100,
        le=1_000_000,
        description="Paired bootstrap resamples (seeded by runtime.seed).",
    )
    min_recovery: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Smallest allowed student accuracy / teacher accuracy (e.g. 0.99): stays meaningful when the base model's score drifts.",
    )
    max_class_drop: float | None = Field(
        None,
        ge=0,
        le=100,
        description="Largest allowed accuracy drop of any single class (label), in percentage points; catches a class that collapses while the overall drop passes.",
    )
    metrics: dict[str, MetricThresholds] = Field(
        default_factory=dict,
        exclude_if=_is({}),
        description="Limits on the task's metrics by name, student against teacher: {metric: {max_drop, max_relative_drop, min_recovery (higher-is-better metrics), max_increase, max_relative_increase (lower-is-better: errors, nll, perplexity), min_value, max_value}}, e.g. {perplexity: {max_relative_increase: 0.05}}.",
    )

    def active(self) -> dict[str, float]:
        """The thresholds that are set (the decision-rule fields are not thresholds).

        Metric thresholds are flattened as ``metrics.<metric>.<limit>``.
        """
        out = {
            k: float(v)
            for k, v in self.model_dump().items()
            if v is not None and k not in _RULE_FIELDS
        }
        for metric, limits in sorted(self.metrics.items()):
            for rule, value in limits.active().items():
                out[f"metrics.{metric}.{rule}"] = value
        return out


_RULE_FIELDS = frozenset(
    {"decision", "confidence", "inconclusive", "bootstrap_resamples", "metrics"}
)
# The historical thresholds that read classification's accuracy.
_ACCURACY_NAMES = frozenset(
    {
        "max_accuracy_drop",
        "max_relative_accuracy_drop",
        "min_recovery",
        "max_class_drop",
        "max_accuracy_drop_vs_champion",
    }
)


class MlflowConfig(Frozen):
    enabled: bool = Field(True, description="Record the gate in MLflow.")
    tracking_uri: str | None = Field(
        None,
        description="Tracking URI; else MLFLOW_TRACKING_URI; else sqlite:///mlflow.db beside the config.",
    )
    experiment: str = Field("ci-compress", min_length=1, description="Experiment name.")
    run_name: str | None = Field(None, description="Run name; default derived from the commit.")
    required: bool = Field(
        True,
        description="When false, an unreachable server is a warning and the gate still runs (local pre-push checks).",
    )
    registered_model: str | None = Field(
        None,
        min_length=1,
        max_length=256,
        pattern=r"^[^/@:]+$",
        description="Registry name: every gate registers its student as a new version of this model. Unset: no registration, no promotion, no champion baseline.",
    )
    alias: str = Field(
        "champion",
        min_length=1,
        max_length=255,
        pattern=r"^[\w-]+$",
        description="Alias that marks the production version; moved to the new version when the gate passes on the default branch (or with --promote locally). 'latest' and v<number> are reserved by MLflow.",
    )
    promotion_lock_ttl: float = Field(
        300.0,
        gt=0,
        le=86400,
        description="Seconds a gate's promotion lock (the registered model <registered_model>.ci-compress-lock) is leased for; a lock older than this was left by a crashed job and is broken.",
    )
    promotion_lock_wait: float = Field(
        330.0,
        ge=0,
        le=86400,
        description="Seconds a gate waits for another gate's promotion lock before it gives up (exit 4); at least promotion_lock_ttl, so a crashed holder's lock is broken within one job.",
    )

    @model_validator(mode="after")
    def _alias_not_reserved(self) -> MlflowConfig:
        if re.fullmatch(r"[vV]\d+", self.alias) or self.alias.lower() == "latest":
            raise ValueError(
                f"mlflow.alias: {self.alias!r} is reserved by MLflow (v<number> names a version, 'latest' the newest); pick a name such as 'champion'"
            )
        return self


class ReportConfig(Frozen):
    dir: str = Field(
        "ci-compress-report",
        min_length=1,
        description="Folder for report.json, report.md and the shipped student.",
    )


class ExplainConfig(Frozen):
    """Per-layer sensitivity analysis inside ``ci-compress run`` (``ci-compress explain`` always runs it)."""

    when: Literal["never", "fail", "always"] = Field(
        "never",
        description="When `run` adds the analysis to the report: never, fail (only when the gate fails) or always. `explain: true` means always, `explain: fail` is short for `explain: {when: fail}`.",
    )
    max_exclude: int | None = Field(
        None,
        ge=1,
        description="Stop the exclude-list search after this many layers (default: all compressed layers).",
    )

    @model_validator(mode="before")
    @classmethod
    def _from_bool(cls, value: Any) -> Any:
        if isinstance(value, bool):
            return {"when": "always" if value else "never"}
        if isinstance(value, str):  # explain: fail
            return {"when": value}
        return value


class ShipConfig(Frozen):
    filename: str = Field(
        "student.ccz",
        pattern=r"^[\w.-]+$",
        description="File name of the shipped student inside the report folder (a plain name ending in .ccz, not one of the report files).",
    )

    @model_validator(mode="after")
    def _plain_student_name(self) -> ShipConfig:
        name = self.filename
        if not name.endswith(".ccz") or name.startswith(".") or name in REPORT_FILES:
            raise ValueError(
                f"ship.filename: {name!r} must be a plain file name ending in .ccz that does "
                f"not start with '.' and is none of the report files ({', '.join(REPORT_FILES)})"
            )
        return self

    zstd_level: int = Field(19, ge=1, le=22, description="zstandard level for the packed payload.")
    export: tuple[Literal["torchscript", "onnx", "pt2"], ...] = Field(
        (),
        description="Deployable exports written next to the shipped file and checked on the holdout: torchscript, onnx (needs the 'export' extra), pt2 (a torch.export program, what model.path also reads).",
    )
    runtime: Literal["torch", "onnxruntime", "openvino"] = Field(
        "torch",
        exclude_if=_is("torch"),
        description="Where the student serves, and so where the gate evaluates and times it: torch (the .ccz rebuilt in PyTorch), onnxruntime (student.onnx in an ONNX Runtime session; the 'onnxruntime' extra) or openvino (student.xml + student.bin compiled by OpenVINO; the 'openvino' extra). The .ccz is written either way; the shipped size is the runtime artifact's.",
    )
    quantize: Literal["none", "int8", "int8-weights"] = Field(
        "none",
        exclude_if=_is("none"),
        description="int8: post-training static int8 by the runtime's own toolchain (ONNX Runtime quantize_static, QDQ, per-channel weights; NNCF for openvino), calibrated on the first ship.calibration_batches batches of data.calibration. Needs ship.runtime onnxruntime or openvino. int8-weights: weights only (every MatMul and embedding table, int8 per output channel, NNCF's compress_weights, no calibration), computed in fp32: about 4x smaller at fp32 speed, for CPUs whose int8 kernels are not faster. Needs ship.runtime openvino.",
    )
    calibration_batches: int = Field(
        8,
        ge=1,
        le=10000,
        exclude_if=_is(8),
        description="Batches of data.calibration (of data.batch_size samples) that calibrate ship.quantize: int8.",
    )

    @model_validator(mode="after")
    def _quantize_needs_a_runtime(self) -> ShipConfig:
        if self.quantize == "int8-weights" and self.runtime != "openvino":
            raise ValueError(
                f"ship.quantize: int8-weights is OpenVINO's weight compression (NNCF), and "
                f"ship.runtime is {self.runtime}; set ship.runtime: openvino (in torch, use a "
                "quantize pass: scheme int8-weight-only; in onnxruntime, ship.quantize: int8)"
            )
        if self.quantize == "int8" and self.runtime == "torch":
            raise ValueError(
                "ship.quantize: int8 is done by the serving runtime's own toolchain; "
                "set ship.runtime: onnxruntime or openvino (in torch, use a quantize pass: "
                "scheme int8-static or int8-dynamic)"
            )
        return self


class RuntimeConfig(Frozen):
    seed: int = Field(0, ge=0, description="Seed for every random generator the gate uses.")
    threads: int = Field(
        1,
        ge=1,
        le=256,
        description="torch intra-op threads during evaluation and latency measurement.",
    )
    latency_batch_size: int = Field(64, ge=1, description="Batch size for the latency measurement.")
    latency_repeats: int = Field(
        30,
        ge=1,
        le=10000,
        description="Timed turns of teacher and student (order alternating); the median is reported, and the interval of the latency ratio needs at least 6.",
    )
    latency_warmup: int = Field(5, ge=0, le=1000, description="Untimed warm-up repeats.")
    device: Literal["cpu", "cuda", "auto"] = Field(
        "cpu",
        exclude_if=_is("cpu"),
        description="Where evaluation, latency and the passes that train run: cpu, cuda (an error when no GPU is usable) or auto (cuda when present, else cpu). torch.ao int8 modules always run on the CPU.",
    )


class CompressConfig(Frozen):
    version: Literal[1] = Field(1, description="Config format version.")
    model: ModelSource
    data: DataConfig
    passes: tuple[SerializeAsAny[PassConfig], ...] = Field(
        (), description="Compression passes, applied in order."
    )
    thresholds: Thresholds
    mlflow: MlflowConfig = MlflowConfig()
    report: ReportConfig = ReportConfig()
    ship: ShipConfig = ShipConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    explain: ExplainConfig = Field(default_factory=lambda: ExplainConfig.model_validate({}))
    tune: TuneConfig | None = Field(
        None, description="Search for the most compressed student that passes (ci-compress tune)."
    )
    task: TaskConfig | None = Field(
        None,
        exclude_if=_is(None),
        description="What the model's output means and how student and teacher are compared (default: classification, top-1).",
    )

    def task_config(self) -> TaskConfig:
        """The task, classification when the config has no task section."""
        return self.task if self.task is not None else TaskConfig()

    @model_validator(mode="after")
    def _some_threshold(self) -> CompressConfig:
        if not self.thresholds.active():
            raise ValueError(
                "thresholds: set at least one threshold; a gate that checks nothing passes anything"
            )
        return self

    @model_validator(mode="after")
    def _thresholds_fit_the_task(self) -> CompressConfig:
        task = self.task_config()
        check_metric_thresholds(self.thresholds.metrics, task, _did_you_mean)
        if task.type != "classification":
            wrong = sorted(set(self.thresholds.active()) & _ACCURACY_NAMES)
            if wrong:
                first = next(iter(task.metric_directions()))
                raise ValueError(
                    f"thresholds.{wrong[0]}: reads top-1 accuracy, which the {task.type} task does not measure; "
                    f"limit its metrics instead, e.g. thresholds.metrics: {{{first}: {{...}}}}"
                )
        return self

    @model_validator(mode="after")
    def _champion_needs_registry(self) -> CompressConfig:
        vs = [k for k in self.thresholds.active() if k.endswith("_vs_champion")]
        if vs and not (self.mlflow.enabled and self.mlflow.registered_model):
            raise ValueError(
                f"thresholds.{vs[0]}: a champion baseline needs mlflow.enabled: true and mlflow.registered_model (the registry holds the champion)"
            )
        return self


@dataclass(frozen=True)
class LoadedConfig:
    """A validated config and where it came from (relative paths resolve against base_dir)."""

    config: CompressConfig
    source: Path | None
    base_dir: Path
    sha256: str
    text: str | None = None  # the config text as read (kept for the reproducibility manifest)
    # Command-line overrides applied after reading ({"data.holdout.limit": 50, ...});
    # text and sha256 stay those of the file, the manifest records these beside them.
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def resolve(self, path: str) -> Path:
        p = Path(os.path.expanduser(path))
        return p if p.is_absolute() else (self.base_dir / p)


# ---------------------------------------------------------------- loading


def load_config(path: str | os.PathLike[str]) -> LoadedConfig:
    """Read, parse and validate a YAML config file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"config file not found: {p}",
            hint="pass --config with the path of your compress.yaml (ci-compress init writes one)",
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file {p}: {e}") from e
    return parse_config_text(text, source=p)


def parse_config_text(
    text: str, *, source: Path | None = None, base_dir: Path | None = None
) -> LoadedConfig:
    name = str(source) if source else "<config>"
    try:
        raw = load_yaml(text, origin=name)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(
            f"{name}:{where}: YAML syntax error: {problem}",
            hint="fix the YAML syntax (indentation, quotes, colons)",
        ) from None
    if raw is None:
        raise ConfigError(
            f"{name}: the config is empty",
            hint="see `ci-compress schema` or the README for a minimal config",
        )
    config = parse_config(raw, origin=name)
    base = base_dir or (source.resolve().parent if source else Path.cwd())
    return LoadedConfig(
        config=config,
        source=source,
        base_dir=base,
        sha256=text_sha256(text),
        text=text,
    )


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def interpolate(raw: Any, environ: Mapping[str, str], path: str = "") -> Any:
    """Replace ``${NAME}`` in every string value with the environment variable NAME.

    Only the braced form is read (``$NAME`` and ``$$`` stay as written); keys are never
    interpolated. A variable that is not set is a :class:`ConfigError` naming the field.
    A string with references becomes a :class:`~ci_compress.redaction.Interpolated`:
    the value for the code that uses it, its template for every writer (interpolation
    is how secrets get into a config). Each value taken from the environment is also
    registered with :mod:`ci_compress.redaction`, so free text that quotes it (an
    error message, a log line) shows ``${NAME}`` instead. An already interpolated
    value is never interpolated again (a secret may contain ``${`` itself).
    """

    if isinstance(raw, redaction.Interpolated):
        return raw
    if isinstance(raw, str):

        def sub(m: re.Match[str]) -> str:
            name = m.group(1)
            if name not in environ:
                raise ConfigError(
                    f"environment variable {name} is not set (referenced as ${{{name}}})",
                    path=path or None,
                    hint=f"export {name}, or write the value into the config",
                )
            value = environ[name]
            redaction.register(value, f"${{{name}}}")
            return value

        value = _ENV_REF.sub(sub, raw)
        return redaction.Interpolated(value, raw) if _ENV_REF.search(raw) else raw
    if isinstance(raw, Mapping):
        return {k: interpolate(v, environ, _join(path, str(k))) for k, v in raw.items()}
    if isinstance(raw, list):
        return [interpolate(v, environ, _join(path, i)) for i, v in enumerate(raw)]
    return raw


def _contradictions(passes: Sequence[PassConfig]) -> None:
    """Reject pass lists whose later steps would undo or repeat earlier ones.

    Contradictory, by definition here:

    * a ``quantize`` after a ``quantize``: the first already replaced the selected
      Linear layers with int8 ones, so the second would either find nothing to do or
      re-quantize already rounded weights;
    * a ``prune`` after a ``quantize``: pruning touches float ``Linear`` weights, which
      the quantize pass has replaced; it would silently skip the quantized layers.

    Both are judged on the pass's ``include``/``exclude`` patterns as written: two
    passes overlap unless one's ``include`` is a list of exact names disjoint from the
    other's (patterns and globs may overlap, so they count as overlapping).
    """

    def names(p: PassConfig) -> set[str] | None:
        exact = [x for x in p.include if not x.startswith("re:") and not any(c in x for c in "*?[")]
        return set(exact) - set(p.exclude) if len(exact) == len(p.include) else None

    for j, later in enumerate(passes):
        for i in range(j):
            earlier = passes[i]
            if earlier.type != "quantize" or later.type not in ("quantize", "prune"):
                continue
            a, b = names(earlier), names(later)
            if a is not None and b is not None and not (a & b):
                continue
            what = "quantizes again" if later.type == "quantize" else "prunes"
            raise ConfigError(
                f"passes[{j}] ({later.type}) {what} layers that passes[{i}] (quantize) already "
                "quantized; the passes contradict each other",
                path=f"passes[{j}]",
                hint="prune before you quantize, quantize once, or give the passes "
                "disjoint include lists of exact layer names",
            )


def parse_config(
    raw: Any, *, origin: str = "<config>", environ: Mapping[str, str] | None = None
) -> CompressConfig:
    """Validate a plain mapping (as read from YAML) into a :class:`CompressConfig`.

    ``${NAME}`` references are first replaced from ``environ`` (default: the process
    environment), see :func:`interpolate`.
    """

    if not isinstance(raw, Mapping):
        raise ConfigError(
            f"{origin}: the top level must be a mapping of sections, got {type(raw).__name__}"
        )
    data = dict(interpolate(raw, os.environ if environ is None else environ))
    version = data.get("version", CONFIG_VERSION)
    if version != CONFIG_VERSION:
        raise ConfigError(
            f"unsupported config version {version!r}; this ci-compress reads version {CONFIG_VERSION}",
            path="version",
        )
    raw_passes = data.pop("passes", None) or []
    if not isinstance(raw_passes, Sequence) or isinstance(raw_passes, str):
        raise ConfigError(
            f"must be a list of passes, got {type(raw_passes).__name__}", path="passes"
        )
    passes: list[PassConfig] = []
    for i, item in enumerate(raw_passes):
        where = f"passes[{i}]"
        if not isinstance(item, Mapping):
            raise ConfigError(f"must be a mapping with a 'type' key, got {item!r}", path=where)
        name = item.get("type")
        if name not in PASSES:
            raise ConfigError(
                f"unknown pass {name!r}{_did_you_mean(str(name), PASSES)}",
                path=f"{where}.type",
                hint=f"known passes: {', '.join(sorted(PASSES))}",
            )
        cls = PASSES[name].Config
        _check_keys(cls, item, where)
        try:
            passes.append(cls.model_validate(dict(item)))
        except ValidationError as e:
            raise _convert(e, cls, prefix=where) from None
    _check_keys(CompressConfig, data, "")
    _contradictions(passes)
    try:
        return CompressConfig.model_validate({**data, "passes": passes})
    except ValidationError as e:
        raise _convert(e, CompressConfig, prefix="") from None


def _did_you_mean(word: str, choices: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _join(prefix: str, part: str | int) -> str:
    if isinstance(part, int):
        return f"{prefix}[{part}]"
    return f"{prefix}.{part}" if prefix else part


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The config model class inside an annotation (Optional[X], X, ...), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, Annotated):
        for arg in typing.get_args(annotation):
            found = _model_of(arg)
            if found is not None:
                return found
    return None


def _is_number(annotation: Any) -> bool:
    """Whether a field takes an int or a float (also inside Optional/Annotated), not a bool.

    pydantic's lax mode turns ``true`` into 1 for such a field: a threshold written as
    ``yes`` would silently become 1 point.
    """
    if annotation in (int, float):
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType, Annotated):
        return any(_is_number(a) for a in typing.get_args(annotation))
    return False


def _check_keys(cls: type[BaseModel], data: Any, prefix: str) -> None:
    """Reject unknown keys anywhere below ``cls``, suggesting the closest known key."""
    if not isinstance(data, Mapping):
        return
    fields = cls.model_fields
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(
                f"unknown key{_did_you_mean(str(key), fields)}",
                path=_join(prefix, str(key)),
                hint=f"known keys here: {', '.join(fields)}",
            )
        annotation = fields[key].annotation
        if isinstance(value, bool) and _is_number(annotation):
            raise ConfigError(
                f"must be a number, got the boolean {str(value).lower()}",
                path=_join(prefix, str(key)),
                hint="YAML reads true/false/yes/no/on/off as booleans; write the number",
            )
        sub = _model_of(annotation)
        if sub is not None and sub is not PassConfig:
            _check_keys(sub, value, _join(prefix, str(key)))
        elif typing.get_origin(annotation) is dict and isinstance(value, Mapping):
            item = _model_of(typing.get_args(annotation)[-1])
            for name, entry in value.items():
                if item is not None:
                    _check_keys(item, entry, _join(_join(prefix, str(key)), str(name)))


def _field_info(cls: type[BaseModel], loc: tuple[Any, ...]) -> Any:
    current: Any = cls
    info = None
    for part in loc:
        if isinstance(part, int) or current is None:
            continue
        fields = getattr(current, "model_fields", {})
        if part not in fields:
            return None
        info = fields[part]
        current = _model_of(info.annotation)
    return info


def _interval(info: Any) -> str | None:
    lo: object = None
    hi: object = None
    lo_c = hi_c = ""
    for m in getattr(info, "metadata", []):
        if isinstance(m, annotated_types.Ge):
            lo, lo_c = m.ge, "["
        elif isinstance(m, annotated_types.Gt):
            lo, lo_c = m.gt, "("
        elif isinstance(m, annotated_types.Le):
            hi, hi_c = m.le, "]"
        elif isinstance(m, annotated_types.Lt):
            hi, hi_c = m.lt, ")"
    if lo is None and hi is None:
        return None
    if hi is None:
        return f">= {lo}" if lo_c == "[" else f"> {lo}"
    if lo is None:
        return f"<= {hi}" if hi_c == "]" else f"< {hi}"
    return f"in {lo_c}{lo}, {hi}{hi_c}"


def _convert(err: ValidationError, cls: type[BaseModel], *, prefix: str) -> ConfigError:
    """Turn pydantic's first error into one ConfigError with a YAML path."""
    e = err.errors()[0]
    loc = tuple(e.get("loc", ()))
    path = prefix
    for part in loc:
        path = _join(path, part)
    kind = e.get("type", "")
    value = e.get("input")
    if kind == "missing":
        return ConfigError(
            "required field is missing",
            path=path or None,
            hint="see `ci-compress schema` for every field",
        )
    if kind in {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}:
        interval = _interval(_field_info(cls, loc)) or e["msg"]
        return ConfigError(f"must be {interval}, got {value!r}", path=path)
    if kind == "value_error":
        msg = str(e.get("msg", "")).removeprefix("Value error, ")
        if msg.startswith("thresholds: "):
            return ConfigError(msg.removeprefix("thresholds: "), path="thresholds")
        field_path, sep, rest = msg.partition(": ")
        if sep and re.fullmatch(r"(mlflow|thresholds|ship|task|model)(\.[\w-]+)+", field_path):
            return ConfigError(rest, path=field_path)
        if sep and re.fullmatch(r"\w+", field_path) and _field_info(cls, (*loc, field_path)):
            return ConfigError(rest, path=_join(path, field_path))
        return ConfigError(msg, path=path or None)
    if kind == "literal_error":
        expected = e.get("ctx", {}).get("expected", "")
        return ConfigError(f"must be one of {expected}, got {value!r}", path=path)
    if kind == "string_pattern_mismatch":
        hint = None
        if path.endswith("factory"):
            hint = "write it as package.module:function"
        elif path.endswith("sha256"):
            hint = "give the 64 hex digits printed by `sha256sum FILE`"
        elif path == "model.uri":
            hint = "use models:/<name>@<alias>, models:/<name>/<version> or runs:/<run_id>/<path>"
        elif path == "mlflow.alias":
            hint = "aliases hold letters, digits, '_' and '-'"
        elif path == "mlflow.registered_model":
            hint = "a registered model name without '/', '@' or ':'"
        return ConfigError(f"{value!r} is not of the expected form", path=path, hint=hint)
    return ConfigError(f"{e.get('msg', 'invalid value')}, got {value!r}", path=path or None)


# ---------------------------------------------------------------- schema and flattening


def json_schema() -> dict[str, Any]:
    """JSON Schema of the config file, with one sub-schema per registered pass."""

    schema = CompressConfig.model_json_schema()
    defs = schema.setdefault("$defs", {})
    variants = []
    for name in sorted(PASSES):
        cls = PASSES[name].Config
        sub = cls.model_json_schema(ref_template="#/$defs/{model}")
        defs.update(sub.pop("$defs", {}))
        sub["properties"]["type"] = {"const": name, "description": "Pass name."}
        sub["required"] = sorted({"type", *sub.get("required", [])})
        defs[cls.__name__] = sub
        variants.append({"$ref": f"#/$defs/{cls.__name__}"})
    schema["properties"]["passes"] = {
        "type": "array",
        "items": {"oneOf": variants},
        "description": "Compression passes, applied in order.",
    }
    defs.pop("PassConfig", None)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "ci-compress config"
    return schema


def flatten(value: Any, prefix: str = "") -> dict[str, str]:
    """Flatten a config dump into ``a.b.0.c -> str`` pairs (MLflow param keys)."""
    out: dict[str, str] = {}
    if isinstance(value, Mapping):
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(value, list | tuple) and value and any(isinstance(v, Mapping) for v in value):
        for i, v in enumerate(value):
            out.update(flatten(v, f"{prefix}.{i}"))
    else:
        out[prefix] = (
            ""
            if value is None
            else (",".join(map(str, value)) if isinstance(value, list | tuple) else str(value))
        )
    return out


def to_mapping(
    config: CompressConfig, *, exclude_unset: bool = False, exclude_defaults: bool = False
) -> dict[str, Any]:
    """The config as plain YAML/JSON data, sections in file order.

    The one way a config becomes data again (report.json's ``config``, the MLflow
    params, the manifest's config text when there was no file, the trial configs and
    ``tuned.yaml`` of ``ci-compress tune``): interpolated values come out as their
    ``${NAME}`` templates, and every pass keeps its ``type`` even when defaults or
    unset fields are left out, so the result reads back as the same config.
    """

    def dump(model: BaseModel, **kwargs: Any) -> dict[str, Any]:
        return model.model_dump(
            mode="json", exclude_unset=exclude_unset, exclude_defaults=exclude_defaults, **kwargs
        )

    data = dump(config, exclude={"passes"})
    if config.passes or not (exclude_unset or exclude_defaults):
        data["passes"] = [{"type": p.type, **dump(p)} for p in config.passes]
    return {k: data[k] for k in CompressConfig.model_fields if k in data}


class _YamlDumper(yaml.SafeDumper):
    """``yaml.SafeDumper`` that writes an interpolated value as its ``${NAME}`` template."""


def _represent_interpolated(dumper: yaml.SafeDumper, value: redaction.Interpolated) -> yaml.Node:
    return dumper.represent_str(value.template)


_YamlDumper.add_representer(redaction.Interpolated, _represent_interpolated)


def dump_yaml(data: Any) -> str:
    """YAML text of config-like data (``yaml.safe_dump`` layout, keys in the given order).

    The one config writer to YAML (``tuned.yaml``, the demo's ``compress.yaml``, the
    manifest's config text when there was no file): interpolated values are written as
    their templates. Pass a config object's data through :func:`to_mapping` first.
    """
    return yaml.dump(data, Dumper=_YamlDumper, sort_keys=False)


# Command-line overrides: dotted path -> with_overrides keyword.
OVERRIDES = {
    "data.holdout.limit": "holdout_limit",
    "mlflow.enabled": "mlflow_enabled",
    "runtime.latency_repeats": "latency_repeats",
    "runtime.latency_warmup": "latency_warmup",
}


def with_overrides(
    loaded: LoadedConfig,
    *,
    holdout_limit: int | None = None,
    mlflow_enabled: bool | None = None,
    latency_repeats: int | None = None,
    latency_warmup: int | None = None,
) -> LoadedConfig:
    """A copy of ``loaded`` with command-line overrides applied (fast local checks).

    ``holdout_limit`` sets ``data.holdout.limit``; ``mlflow_enabled=False`` runs with no
    tracking server; the latency knobs shorten the timing loop. See :func:`apply_overrides`.
    """
    given = {
        "holdout_limit": holdout_limit,
        "mlflow_enabled": mlflow_enabled,
        "latency_repeats": latency_repeats,
        "latency_warmup": latency_warmup,
    }
    return apply_overrides(
        loaded, {path: given[kw] for path, kw in OVERRIDES.items() if given[kw] is not None}
    )


def apply_overrides(loaded: LoadedConfig, changes: Mapping[str, Any]) -> LoadedConfig:
    """A copy of ``loaded`` with ``{"section.field": value}`` changes, validated like a file.

    Nothing is read again and nothing is interpolated again: the changed sections are
    re-validated from the objects already loaded (an interpolated value stays the value
    read at load time, even if it contains ``${`` or the variable changed since), and
    the whole config's cross-section rules run once more. ``text`` and ``sha256`` stay
    those of the file as read; ``overrides`` records the changes (the reproducibility
    manifest writes them beside the text, and ``ci-compress reproduce`` re-applies them).
    """
    unknown = sorted(set(changes) - set(OVERRIDES))
    if unknown:
        raise ConfigError(
            f"cannot override {unknown[0]}",
            path=unknown[0],
            hint=f"overridable: {', '.join(OVERRIDES)}",
        )
    config: BaseModel = loaded.config
    for path, value in changes.items():
        # Re-validates every level up to the whole config: its cross-section rules (a
        # champion threshold needs MLflow) see the change.
        config = _replace_at(config, path.split("."), value, prefix="")
    assert isinstance(config, CompressConfig)
    return dataclasses.replace(loaded, config=config, overrides={**loaded.overrides, **changes})


def _fields(model: BaseModel) -> dict[str, Any]:
    """The fields a model was given, as objects (not dumped: nothing is re-interpolated)."""
    return {name: getattr(model, name) for name in model.model_fields_set}


def _replace_at(model: BaseModel, path: list[str], value: Any, *, prefix: str) -> BaseModel:
    """``model`` with the field at ``path`` set to ``value``; each level re-validated."""
    head, rest = path[0], path[1:]
    where = _join(prefix, head)
    new = _replace_at(getattr(model, head), rest, value, prefix=where) if rest else value
    cls = type(model)
    try:
        return cls.model_validate({**_fields(model), head: new})
    except ValidationError as e:
        raise _convert(e, cls, prefix=prefix) from None
