"""Interpolated config values: the value for the code that uses them, the template for
every writer; command-line overrides that never interpolate twice; one report.json writer."""

from __future__ import annotations

import copy
import json
import pickle
from pathlib import Path
from typing import Any

import pytest
import yaml

from ci_compress.config import (
    dump_yaml,
    parse_config,
    parse_config_text,
    to_mapping,
    with_overrides,
)
from ci_compress.errors import ConfigError
from ci_compress.redaction import (
    Interpolated,
    redact,
    redact_data,
    redact_url,
    strip_userinfo,
    templated,
)
from ci_compress.reporting.render import report_json, write_report_json, write_reports
from tests.conftest import base_config
from tests.unit.forged_report import forged_report

TOKEN = "tok-Zq91-secret"
USER = "ci-Zq92-user"
TEMPLATE = "https://${USER}:${TOKEN}@mlflow.example/x?y=1"
VALUE = f"https://{USER}:{TOKEN}@mlflow.example/x?y=1"
ENV = {"TOKEN": TOKEN, "USER": USER, "KW": "kw-Zq93-secret"}


def _config_text() -> str:
    raw = base_config(
        model={
            "path": "digits_mlp.safetensors",
            "factory": "ci_compress.demo.models:digits_mlp",
            "factory_kwargs": {"hidden": [8], "note": "key=${KW}", "deep": {"list": ["${KW}"]}},
        },
        mlflow={"enabled": True, "tracking_uri": TEMPLATE, "run_name": "gate-${KW}"},
        passes=[{"type": "prune", "amount": 0.5, "include": ["${KW}*"]}, {"type": "quantize"}],
    )
    return yaml.safe_dump(raw, sort_keys=False)


@pytest.fixture
def loaded(monkeypatch: pytest.MonkeyPatch) -> Any:
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    return parse_config_text(_config_text(), base_dir=Path("."))


def _no_secret(text: str) -> None:
    for secret in (TOKEN, USER, ENV["KW"]):
        assert secret not in text


def test_the_value_is_what_code_uses_the_template_what_it_remembers() -> None:
    x = Interpolated(VALUE, TEMPLATE)
    assert isinstance(x, str) and x == VALUE
    assert str(x) == VALUE and f"{x}" == VALUE and repr(x) == repr(VALUE)
    assert type(str(x)) is str and x.startswith("https://") and x.template == TEMPLATE
    assert type(x + "/more") is str  # derived text is no longer a config value
    assert redact(x) == TEMPLATE  # references are not secrets: shown as written
    assert redact(Interpolated(VALUE, VALUE)) == "https://***@mlflow.example/x?y=1"
    assert redact_url(x) == "https://***@mlflow.example/x?y=1"
    query = Interpolated(f"https://h/m?token={TOKEN}", "https://h/m?token=${TOKEN}")
    assert redact_url(query) == "https://h/m?token=${TOKEN}"
    assert templated({"a": [x, (x,)], x: 1}) == {"a": [TEMPLATE, (TEMPLATE,)], TEMPLATE: 1}
    for twin in (pickle.loads(pickle.dumps(x)), copy.deepcopy(x), copy.copy(x)):
        assert twin == VALUE and twin.template == TEMPLATE


def test_parsed_values_keep_their_type_in_every_kind_of_field(loaded: Any) -> None:
    cfg = loaded.config
    fields = {
        "mlflow.tracking_uri (str | None)": cfg.mlflow.tracking_uri,
        "mlflow.run_name": cfg.mlflow.run_name,
        "model.factory_kwargs.note (Any)": cfg.model.factory_kwargs["note"],
        "model.factory_kwargs.deep.list[0]": cfg.model.factory_kwargs["deep"]["list"][0],
        "passes[0].include[0] (tuple[str, ...])": cfg.passes[0].include[0],
    }
    for where, value in fields.items():
        assert isinstance(value, Interpolated), where
    assert cfg.mlflow.tracking_uri == VALUE and cfg.mlflow.run_name == f"gate-{ENV['KW']}"
    # literal strings stay plain
    assert type(cfg.model.factory) is str and type(cfg.data.holdout.builtin) is str


def test_every_serialiser_writes_the_template(loaded: Any) -> None:
    cfg = loaded.config
    outputs = {
        "model_dump()": repr(cfg.model_dump()),
        "model_dump(json)": json.dumps(cfg.model_dump(mode="json")),
        "model_dump(exclude_unset)": repr(cfg.model_dump(exclude_unset=True)),
        "model_dump(exclude_defaults)": repr(cfg.model_dump(exclude_defaults=True)),
        "model_dump_json()": cfg.model_dump_json(),
        "pass model_dump": repr(cfg.passes[0].model_dump()),
        "to_mapping": json.dumps(to_mapping(cfg)),
        "dump_yaml(to_mapping)": dump_yaml(to_mapping(cfg)),
        "dump_yaml(raw values)": dump_yaml({"uri": cfg.mlflow.tracking_uri}),
        "redact_data(raw values)": json.dumps(redact_data({"k": cfg.model.factory_kwargs})),
    }
    for where, text in outputs.items():
        _no_secret(text)
        assert "${TOKEN}" in text or "${KW}" in text, where
    assert to_mapping(cfg)["mlflow"]["tracking_uri"] == TEMPLATE
    # exclude_defaults still works (the template dump must not switch it off)
    assert cfg.model_dump(exclude_defaults=True)["thresholds"] == {"max_accuracy_drop": 2.0}
    # a plain safe_dump refuses the type rather than write the value
    with pytest.raises(yaml.representer.RepresenterError):
        yaml.safe_dump({"uri": cfg.mlflow.tracking_uri})


def test_the_dump_reads_back_as_the_same_config(loaded: Any) -> None:
    cfg = loaded.config
    again = parse_config(yaml.safe_load(dump_yaml(to_mapping(cfg))), environ=ENV)
    assert again == cfg
    short = parse_config(
        yaml.safe_load(dump_yaml(to_mapping(cfg, exclude_defaults=True))), environ=ENV
    )
    assert short == cfg  # pass types survive exclude_defaults
    assert pickle.loads(pickle.dumps(loaded)).config.mlflow.tracking_uri.template == TEMPLATE


def test_a_value_holding_dollar_brace_is_not_interpolated_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KW", "kw-${NOT_SET}-Zq94")  # a secret may contain "${"
    monkeypatch.setenv("TOKEN", TOKEN)
    monkeypatch.setenv("USER", USER)
    monkeypatch.delenv("NOT_SET", raising=False)
    loaded = parse_config_text(_config_text(), base_dir=Path("."))
    fast = with_overrides(loaded, holdout_limit=50, mlflow_enabled=False, latency_repeats=3)
    assert fast.config.mlflow.run_name == "gate-kw-${NOT_SET}-Zq94"
    assert fast.config.model.factory_kwargs["note"] == "key=kw-${NOT_SET}-Zq94"


def test_overrides_read_the_environment_once(loaded: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KW", "changed-after-loading")
    fast = with_overrides(loaded, holdout_limit=50, mlflow_enabled=False)
    assert fast.config.mlflow.run_name == f"gate-{ENV['KW']}"
    assert fast.config.mlflow.tracking_uri.template == TEMPLATE  # still the same type


def test_overrides_keep_the_config_text_and_record_what_changed(loaded: Any) -> None:
    fast = with_overrides(
        loaded, holdout_limit=50, mlflow_enabled=False, latency_repeats=3, latency_warmup=1
    )
    assert fast.text == loaded.text and fast.sha256 == loaded.sha256
    assert fast.source == loaded.source and fast.base_dir == loaded.base_dir
    assert fast.overrides == {
        "data.holdout.limit": 50,
        "mlflow.enabled": False,
        "runtime.latency_repeats": 3,
        "runtime.latency_warmup": 1,
    }
    c = fast.config
    assert (c.data.holdout.limit, c.mlflow.enabled, c.runtime.latency_repeats) == (50, False, 3)
    # everything else is the loaded config, unchanged
    assert c.passes == loaded.config.passes and c.model == loaded.config.model
    assert with_overrides(loaded) == loaded


def test_overrides_are_validated_with_the_yaml_path(loaded: Any) -> None:
    with pytest.raises(ConfigError, match=r"^data.holdout.limit: must be >= 1, got 0$"):
        with_overrides(loaded, holdout_limit=0)
    champion = base_config(
        thresholds={"max_accuracy_drop_vs_champion": 1.0},
        mlflow={"enabled": True, "registered_model": "m"},
    )
    strict = parse_config_text(yaml.safe_dump(champion), base_dir=Path("."))
    with pytest.raises(ConfigError, match="a champion baseline needs mlflow.enabled"):
        with_overrides(strict, mlflow_enabled=False)


# ---------------------------------------------------------------- one report.json writer


def test_the_gate_tune_and_run_json_share_one_report_json_writer(tmp_path: Path) -> None:
    report = forged_report()
    paths = write_reports(report, tmp_path)
    trial = write_report_json(report, tmp_path / "trial" / "report.json")
    assert trial.read_text() == paths["report_json"].read_text() == report_json(report)


def test_strip_userinfo_removes_the_whole_credential() -> None:
    assert strip_userinfo(VALUE) == "https://mlflow.example/x?y=1"
    assert strip_userinfo("https://tok@h:8443/p") == "https://h:8443/p"
    assert strip_userinfo("https://h:8443/p?a=b@c") == "https://h:8443/p?a=b@c"
