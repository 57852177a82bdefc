"""The base of every config object: frozen, no unknown keys, secrets dump as templates.

One definition for the whole config tree (``config``, its ``tune`` section and every pass
config build on it). Unknown keys are rejected by pydantic here and, with a
did-you-mean, by the config loader before pydantic sees them.

Values interpolated from the environment (:class:`~ci_compress.redaction.Interpolated`)
stay that type through validation and serialise as their ``${NAME}`` template, in
every ``model_dump`` mode (``exclude_unset``/``exclude_defaults`` included) and in
``model_dump_json``: a config object cannot be written out with the secrets it holds.
(pydantic turns a ``str`` subclass into a plain ``str`` when it validates a ``str``
field; :meth:`Frozen._keep_interpolated` puts the value back wherever validation left
the text as it was.) This is the one import of ours beyond ``errors`` here: the type
lives with the rest of the secret handling, in :mod:`ci_compress.redaction`, a leaf too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    SerializerFunctionWrapHandler,
    ValidatorFunctionWrapHandler,
    model_serializer,
    model_validator,
)

from ci_compress.redaction import Interpolated, templated


class Frozen(BaseModel):
    """Frozen, no unknown keys, no infinite or NaN numbers (``.inf`` is valid YAML);
    interpolated values kept, and dumped as templates."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    @model_validator(mode="wrap")
    @classmethod
    def _keep_interpolated(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        model = handler(data)
        if isinstance(data, Mapping) and isinstance(model, Frozen):
            for name in type(model).model_fields:
                if name in data:
                    kept = _restore(data[name], model.__dict__[name])
                    if kept is not model.__dict__[name]:
                        model.__dict__[name] = kept  # frozen: set once, while validating
        return model

    @model_serializer(mode="wrap")
    def _dump_templates(self, handler: SerializerFunctionWrapHandler) -> Any:
        # Serialise a shallow copy whose interpolated values are their templates (nested
        # config objects serialise themselves). A copy, not per-field serialisers: those
        # would switch off pydantic's exclude_defaults.
        shown = {k: templated(v) for k, v in self.__dict__.items()}
        if all(shown[k] is v for k, v in self.__dict__.items()):
            return handler(self)
        return handler(self.model_construct(_fields_set=self.model_fields_set, **shown))


def _restore(given: Any, validated: Any) -> Any:
    """``validated`` with the :class:`Interpolated` values of ``given`` put back where
    validation produced the same text as a plain ``str`` (nested dicts, lists, tuples)."""
    if isinstance(given, Interpolated):
        return given if type(validated) is str and validated == given else validated
    if isinstance(given, Mapping) and type(validated) is dict:
        out = {k: _restore(given[k], v) if k in given else v for k, v in validated.items()}
        return validated if all(out[k] is validated[k] for k in out) else out
    if (
        isinstance(given, list | tuple)
        and type(validated) in (list, tuple)
        and len(given) == len(validated)
    ):
        items = [_restore(g, v) for g, v in zip(given, validated, strict=True)]
        if all(a is b for a, b in zip(items, validated, strict=True)):
            return validated
        return type(validated)(items)
    return validated
