"""A config is read like a hostile file: what was reviewed is what is read.

Each case fails on the reader before the reorganisation: an alias bomb hung it, a
duplicate key silently replaced the reviewed value, ``yes`` became a threshold of 1,
``.inf`` switched a limit off, and ``ship.filename`` could overwrite a report file.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import yaml

from ci_compress.config import parse_config, parse_config_text
from ci_compress.errors import ConfigError, ExitCode


def base(**overrides: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "version": 1,
        "model": {"path": "m.safetensors", "factory": "ci_compress.demo.models:digits_mlp"},
        "data": {"holdout": {"builtin": "digits"}},
        "thresholds": {"max_accuracy_drop": 1.0},
    }
    cfg.update(overrides)
    return cfg


def billion_laughs(levels: int = 9) -> str:
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        prev, cur = chr(96 + i), chr(97 + i)
        lines.append(f"{cur}: &{cur} [" + ", ".join([f"*{prev}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_before_anything_walks_it() -> None:
    text = billion_laughs()  # about 400 bytes standing for 9**9 = 387 million values
    assert len(text) < 1000
    start = time.process_time()
    with pytest.raises(ConfigError, match="alias bomb") as err:
        parse_config_text(text)
    assert time.process_time() - start < 5  # refused from the node graph, not by expanding it
    assert err.value.exit_code == ExitCode.CONFIG


def test_ordinary_anchors_and_merge_keys_still_work() -> None:
    merged = parse_config_text(
        yaml.safe_dump(base(), sort_keys=False)
        + "passes:\n  - &p {type: prune, amount: 0.5}\n  - {<<: *p, amount: 0.25}\n"
    )
    assert [p.amount for p in merged.config.passes] == [0.5, 0.25]  # type: ignore[attr-defined]


def test_a_duplicate_key_is_refused_with_both_lines() -> None:
    text = (
        yaml.safe_dump(base(), sort_keys=False)
        + "thresholds:\n  max_accuracy_drop: 100\n"  # a second, looser block below the reviewed one
    )
    with pytest.raises(ConfigError, match=r"key 'thresholds' is given twice") as err:
        parse_config_text(text)
    assert "first at line" in err.value.message
    nested = "version: 1\nthresholds:\n  max_accuracy_drop: 0.5\n  max_accuracy_drop: 9\n"
    with pytest.raises(ConfigError, match="max_accuracy_drop' is given twice"):
        parse_config_text(nested)


@pytest.mark.parametrize(
    ("overrides", "path", "fragment"),
    [
        ({"thresholds": {"max_accuracy_drop": True}}, "thresholds.max_accuracy_drop", "boolean"),
        ({"thresholds": {"min_recovery": False}}, "thresholds.min_recovery", "boolean"),
        ({"thresholds": {"max_size_bytes": float("inf")}}, "thresholds.max_size_bytes", "finite"),
        (
            {"thresholds": {"max_latency_ratio": float("nan")}},
            "thresholds.max_latency_ratio",
            "finite",
        ),
        ({"passes": [{"type": "prune", "amount": True}]}, "passes[0].amount", "boolean"),
        ({"runtime": {"threads": True}}, "runtime.threads", "boolean"),
        ({"ship": {"filename": ".."}}, "ship.filename", "plain file name"),
        ({"ship": {"filename": "report.json"}}, "ship.filename", "report files"),
        ({"ship": {"filename": "junit.xml"}}, "ship.filename", "report files"),
        ({"ship": {"filename": "student.pt"}}, "ship.filename", "ending in .ccz"),
    ],
)
def test_values_that_would_change_the_gate_silently(
    overrides: dict[str, Any], path: str, fragment: str
) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(base(**overrides))
    assert err.value.path == path
    assert fragment in err.value.message
    assert err.value.exit_code == ExitCode.CONFIG


def test_yes_in_yaml_is_a_boolean_and_refused_as_a_threshold() -> None:
    text = yaml.safe_dump(base(), sort_keys=False).replace(
        "max_accuracy_drop: 1.0", "max_accuracy_drop: yes"
    )
    with pytest.raises(ConfigError, match="boolean true"):
        parse_config_text(text)


def test_a_student_name_of_its_own_is_fine() -> None:
    assert parse_config(base(ship={"filename": "mnist-int8.ccz"})).ship.filename == "mnist-int8.ccz"
