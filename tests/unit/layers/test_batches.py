"""Batches of any structure and outputs of any structure: the model adapter."""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict, namedtuple
from typing import Any

import pytest
import torch
from torch import nn

from ci_compress.errors import ConfigError, DataError, ModelOutputError
from ci_compress.layers import batches
from ci_compress.layers.outputs import describe_output, select_output
from ci_compress.loading.data import HoldoutDigest


class Positional(nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a.float() + b.float()


class Keyword(nn.Module):
    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        h = input_ids.float()[..., None].repeat(1, 1, 3)
        if attention_mask is not None:
            h = h * attention_mask[..., None]
        return {"last_hidden_state": h, "pooled": h.mean(1)}


def test_call_model_takes_a_tensor_positional_and_keyword_inputs() -> None:
    x = torch.ones(4, 2)
    assert torch.equal(batches.call_model(nn.Identity(), x), x)
    assert torch.equal(batches.call_model(Positional(), (x, x)), 2 * x)
    assert torch.equal(batches.call_model(Positional(), [x, x]), 2 * x)
    ids = torch.arange(8).reshape(2, 4)
    out = batches.call_model(Keyword(), {"input_ids": ids, "attention_mask": torch.ones(2, 4)})
    assert out["last_hidden_state"].shape == (2, 4, 3)


def test_slicing_selecting_and_joining_keep_the_structure() -> None:
    inputs = {"b": torch.arange(10).reshape(5, 2), "a": torch.arange(5)}
    assert batches.batch_size(inputs) == 5
    part = batches.take(inputs, 1, 3)
    assert isinstance(part, dict) and list(part) == ["b", "a"]
    assert torch.equal(part["a"], torch.tensor([1, 2]))
    picked = batches.select((torch.arange(5), torch.arange(5) * 2), torch.tensor([4, 0]))
    assert isinstance(picked, tuple) and torch.equal(picked[1], torch.tensor([8, 0]))
    joined = batches.concat([batches.take(inputs, 0, 2), batches.take(inputs, 2, 5)])
    assert all(torch.equal(joined[k], inputs[k]) for k in inputs)  # type: ignore[index]
    assert [n for n, _ in batches.named_tensors(inputs)] == ["a", "b"]  # sorted by name
    assert batches.describe(inputs) == "{b: (5, 2) int64, a: (5,) int64}"


def test_integer_inputs_are_accepted_and_float_inputs_must_be_finite() -> None:
    batches.check_inputs({"input_ids": torch.ones(2, 3, dtype=torch.long)}, "data.holdout")
    bad = torch.ones(2, 3)
    bad[1, 1] = float("nan")
    with pytest.raises(DataError, match="input 'mask' contains 1 NaN or infinite values"):
        batches.check_inputs({"ids": torch.ones(2, 3), "mask": bad}, "data.holdout")
    with pytest.raises(DataError, match=r"disagree on the number of samples \(0: 2, 1: 3\)"):
        batches.check_inputs((torch.ones(2), torch.ones(3)), "data.holdout")
    with pytest.raises(DataError, match="empty mapping"):
        batches.check_inputs({}, "data.holdout")
    with pytest.raises(DataError, match="under a string name; mask is not"):
        batches.check_inputs({"ids": torch.ones(2), "mask": [1, 2]}, "data.holdout")
    with pytest.raises(DataError, match="x is a scalar"):
        batches.check_inputs(torch.tensor(1.0), "data.holdout")


def test_all_finite_is_one_sum_and_checks_every_element_only_when_the_sum_is_not_finite() -> None:
    for bad in (float("nan"), float("inf"), float("-inf")):
        t = torch.ones(64, 10)
        t[37, 3] = bad
        assert not batches.all_finite(t)
        assert not batches.all_finite(t.half()) and not batches.all_finite(t.double())
    both = torch.zeros(8)
    both[1], both[6] = float("inf"), float("-inf")  # the sum is NaN, not finite
    assert not batches.all_finite(both)
    # finite values whose sum overflows: the element-wise check has the last word
    big = torch.full((4, 3), 3e38)
    assert not math.isfinite(big.sum().item()) and batches.all_finite(big)
    assert batches.all_finite(torch.full((100,), 60000.0, dtype=torch.float16))
    assert batches.all_finite(torch.arange(5)) and batches.all_finite(torch.zeros(0))
    with pytest.raises(DataError, match="x contains 1 NaN or infinite values"):
        batches.check_inputs(both[:2], "data.holdout")


def test_cuda_where_there_is_none_is_a_config_error_naming_the_field(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert batches.resolve_device("cpu").type == "cpu"
    assert batches.resolve_device("auto").type == "cpu"
    with pytest.raises(ConfigError) as e:
        batches.resolve_device("cuda")
    assert str(e.value).startswith("runtime.device: cuda was asked for")
    assert e.value.exit_code == 2 and "runtime.device: auto" in (e.value.hint or "")


# ---------------------------------------------------------------- outputs


class FakeModelOutput(OrderedDict[str, Any]):
    """What transformers' ModelOutput is: an OrderedDict with attribute access."""

    def __getattr__(self, name: str) -> Any:
        return self[name]


def test_default_output_rule() -> None:
    t = torch.ones(2, 3)
    assert select_output(t) is t
    assert select_output((t, torch.zeros(1))) is t
    assert select_output([t]) is t
    assert select_output(FakeModelOutput(loss=torch.zeros(()), logits=t)) is t
    assert select_output({"last_hidden_state": t, "pooler_output": t[:, 0]}) is t


def test_output_by_key_or_index() -> None:
    t, u = torch.ones(2, 3), torch.zeros(2)
    out = FakeModelOutput(last_hidden_state=t, pooler_output=u)
    assert select_output(out, "pooler_output") is u
    assert select_output(out, 1) is u
    assert select_output((t, u), 1) is u
    assert select_output((t, u), -1) is u
    Pair = namedtuple("Pair", "logits aux")
    assert select_output(Pair(t, u), "aux") is u
    assert select_output(t, "logits") is t  # a bare tensor is measured as it is


def test_output_errors_name_what_the_model_returned() -> None:
    t = torch.ones(2, 3)
    out = FakeModelOutput(last_hidden_state=t, pooler_output=t)
    with pytest.raises(ModelOutputError) as e:
        select_output(out, "logits", role="teacher")
    assert str(e.value) == (
        "model.output 'logits' is not in what the teacher model returned: "
        "a FakeModelOutput with keys last_hidden_state, pooler_output"
    )
    assert e.value.exit_code == 3
    with pytest.raises(ModelOutputError, match=r"a tuple of 2 \(tensor \(2, 3\), str\)"):
        select_output((t, "x"), 5)
    with pytest.raises(ModelOutputError, match="returned a str: no tensor"):
        select_output("nope")
    with pytest.raises(ModelOutputError, match="is a str, not a tensor"):
        select_output({"a": "text"}, "a")
    assert describe_output({}) == "a dict with keys (none)"


def test_a_real_hugging_face_model_output_is_a_mapping() -> None:
    outputs = pytest.importorskip("transformers.modeling_outputs")
    t = torch.ones(2, 3)
    out = outputs.SequenceClassifierOutput(logits=t)
    assert select_output(out) is t
    base = outputs.BaseModelOutputWithPooling(last_hidden_state=t, pooler_output=t[:, 0])
    assert select_output(base, "pooler_output").shape == (2,)


# ---------------------------------------------------------------- digest


def old_digest(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> str:
    """HoldoutDigest as it was before structured batches (kept byte-compatible)."""
    hx, hy, shapes = hashlib.sha256(), hashlib.sha256(), []
    for x, y in pairs:
        shape = str(tuple(x.shape[1:]))
        if not shapes or shapes[-1] != shape:
            shapes.append(shape)
        hx.update(x.detach().contiguous().numpy().reshape(-1).view("uint8").data)
        hy.update(y.detach().contiguous().numpy().reshape(-1).view("uint8").data)
    h = hashlib.sha256(";".join(shapes).encode())
    h.update(hx.digest())
    h.update(hy.digest())
    return h.hexdigest()


def digest(pairs: list[tuple[Any, Any]]) -> str:
    d = HoldoutDigest()
    for x, y in pairs:
        d.update(x, y)
    return d.hexdigest()


def test_single_tensor_digest_is_unchanged() -> None:
    x, y = torch.rand(10, 4), torch.arange(10)
    pairs = [(x[:3], y[:3]), (x[3:], y[3:])]
    assert digest(pairs) == old_digest(pairs) == old_digest([(x, y)])


def test_structured_digest_is_deterministic_and_tells_structures_apart() -> None:
    ids, mask = torch.randint(0, 100, (6, 5)), torch.ones(6, 5, dtype=torch.long)
    y = torch.arange(6)
    whole = digest([({"input_ids": ids, "attention_mask": mask}, y)])
    reordered = digest(
        [
            ({"attention_mask": mask[:2], "input_ids": ids[:2]}, y[:2]),
            ({"attention_mask": mask[2:], "input_ids": ids[2:]}, y[2:]),
        ]
    )
    assert whole == reordered  # key order and batching do not matter
    assert digest([((ids, mask), y)]) != whole  # positional is not keyword
    assert digest([({"input_ids": ids, "attention_mask": mask}, None)]) != whole
    changed = ids.clone()
    changed[3, 2] += 1
    assert digest([({"input_ids": changed, "attention_mask": mask}, y)]) != whole
