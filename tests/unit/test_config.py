"""Config validation: every error names the field path and the fix."""

from __future__ import annotations

import json

import pytest

from ci_compress.config import json_schema, parse_config, parse_config_text
from ci_compress.errors import ConfigError
from ci_compress.passes.registry import PASSES
from tests.helpers.configs import base_config


def _error(config: dict) -> str:
    with pytest.raises(ConfigError) as e:
        parse_config(config)
    return str(e.value)


def test_valid_config_round_trips() -> None:
    cfg = parse_config(base_config())
    again = parse_config(cfg.model_dump(mode="json"))
    assert again == cfg
    assert [p.type for p in cfg.passes] == ["prune", "quantize"]


def test_amount_out_of_range_names_the_path_and_interval() -> None:
    msg = _error(base_config(passes=[{"type": "quantize"}, {"type": "prune", "amount": 1.5}]))
    assert msg == "passes[1].amount: must be in [0, 1), got 1.5"


def test_unknown_key_suggests_the_right_one() -> None:
    msg = _error(base_config(thresholds={"max_acuracy_drop": 1.0}))
    assert msg.startswith("thresholds.max_acuracy_drop: unknown key")
    assert "did you mean 'max_accuracy_drop'" in msg


def test_unknown_pass_suggests_a_known_one() -> None:
    msg = _error(base_config(passes=[{"type": "prnue", "amount": 0.1}]))
    assert msg.startswith("passes[0].type: unknown pass 'prnue'") and "did you mean 'prune'" in msg


def test_unknown_key_inside_a_pass() -> None:
    assert "passes[0].amout: unknown key; did you mean 'amount'" in _error(
        base_config(passes=[{"type": "prune", "amout": 0.1}])
    )


def test_no_threshold_is_an_error() -> None:
    assert _error(base_config(thresholds={})).startswith("thresholds: set at least one threshold")


def test_missing_section() -> None:
    cfg = base_config()
    del cfg["model"]
    assert _error(cfg) == "model: required field is missing"


def test_model_needs_exactly_one_source() -> None:
    msg = _error(base_config(model={"path": "a.pt", "uri": "models:/m@champion"}))
    assert msg.startswith("model: give exactly one of path, url, uri")


def test_url_needs_sha256() -> None:
    assert "url needs sha256" in _error(base_config(model={"url": "https://example.invalid/m.pt"}))


def test_bad_factory_form() -> None:
    msg = _error(base_config(model={"path": "m.pt", "factory": "not a factory"}))
    assert msg.startswith("model.factory: 'not a factory' is not of the expected form")


def test_wrong_type() -> None:
    assert _error(base_config(runtime={"threads": "many"})).startswith("runtime.threads:")


def test_yaml_syntax_error_gives_line() -> None:
    with pytest.raises(ConfigError) as e:
        parse_config_text("model:\n  path: [unclosed\n")
    assert "YAML syntax error" in str(e.value) and "line" in str(e.value)


def test_prune_needs_amount_or_threshold() -> None:
    assert "exactly one of amount or threshold" in _error(base_config(passes=[{"type": "prune"}]))


def test_schema_lists_every_registered_pass() -> None:
    schema = json_schema()
    json.dumps(schema)
    variants = schema["properties"]["passes"]["items"]["oneOf"]
    assert len(variants) == len(PASSES)
    for name in PASSES:
        sub = schema["$defs"][PASSES[name].Config.__name__]
        assert sub["properties"]["type"] == {"const": name, "description": "Pass name."}


@pytest.mark.parametrize("name", sorted(PASSES))
def test_every_pass_config_round_trips(name: str) -> None:
    from tests.helpers.passes_support import EXAMPLES

    cls = PASSES[name].Config
    assert cls.__name__.endswith("Config") and PASSES[name].Config is cls
    assert name in EXAMPLES, (
        f"add a valid example config for pass {name!r} to tests/helpers/passes_support.py"
    )
    cfg = cls.model_validate(EXAMPLES[name])
    assert cls.model_validate(cfg.model_dump(mode="json")) == cfg
    # through the YAML loader too, which checks keys and converts errors
    loaded = parse_config(base_config(passes=[cfg.model_dump(mode="json")]))
    assert loaded.passes == (cfg,)
    assert PASSES[name].apply.__doc__ is not None or PASSES[name].__doc__


def test_explain_section_accepts_true_and_a_mapping() -> None:
    assert parse_config(base_config(explain=True)).explain.when == "always"
    assert parse_config(base_config()).explain.when == "never"
    assert parse_config(base_config(explain="fail")).explain.when == "fail"
    cfg = parse_config(base_config(explain={"when": "fail", "max_exclude": 3}))
    assert (cfg.explain.when, cfg.explain.max_exclude) == ("fail", 3)
    with pytest.raises(ConfigError, match=r"explain.when"):
        parse_config(base_config(explain={"when": "sometimes"}))


def test_recovery_and_class_drop_thresholds_are_validated() -> None:
    t = parse_config(base_config(thresholds={"min_recovery": 0.99, "max_class_drop": 5})).thresholds
    assert t.active() == {"min_recovery": 0.99, "max_class_drop": 5.0}
    with pytest.raises(ConfigError, match=r"thresholds.min_recovery"):
        parse_config(base_config(thresholds={"min_recovery": 1.5}))
    with pytest.raises(ConfigError, match=r"did you mean 'max_class_drop'"):
        parse_config(base_config(thresholds={"max_clas_drop": 5}))
