"""``distill`` trains on the objective it is gated on: for an embedding task, the
per-token losses leave out the positions the attention mask drops, and the cosine of
the task's own pooled embeddings is a term of its own. Tiny random BERTs, padded
batches of varied lengths."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from ci_compress.errors import DataError
from ci_compress.evaluation.tasks import Classification, Embedding
from ci_compress.passes import distill
from ci_compress.passes.base import PassContext
from ci_compress.stages import task_objective
from tests.unit.passes.test_distill_layers import LENGTH, VOCAB, _bert, _data, _pass

transformers = pytest.importorskip("transformers")


def _padded(n: int, seed: int) -> dict[str, torch.Tensor]:
    """Sentences of 2 to 8 real tokens, padded (id 0, mask 0) to LENGTH."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, LENGTH // 2 + 1, (n,), generator=g)
    mask = (torch.arange(LENGTH)[None] < lengths[:, None]).long()
    return {
        "input_ids": torch.randint(1, VOCAB, (n, LENGTH), generator=g) * mask,
        "attention_mask": mask,
    }


def _noisy_padding(teacher: nn.Module) -> list[Any]:
    """Hooks that overwrite the teacher's block outputs at the padded positions with
    noise; a BERT's real tokens never attend to padding, so their states stay the same.
    Closures, not methods: the student, a deep copy of the teacher, shares the hooks
    but they change only the teacher's own blocks."""
    blocks = list(teacher.encoder.layer)
    seen: dict[str, torch.Tensor] = {}
    g = torch.Generator().manual_seed(7)

    def remember(module: nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
        if module is teacher:
            seen["mask"] = kwargs["attention_mask"]

    def noise(module: nn.Module, args: Any, output: Any) -> Any:
        if not any(module is b for b in blocks):
            return None
        h = output[0] if isinstance(output, tuple) else output
        pad = (seen["mask"] == 0)[..., None]
        noisy = torch.where(pad, 10 * torch.randn(h.shape, generator=g), h)
        return (noisy, *output[1:]) if isinstance(output, tuple) else noisy

    return [
        teacher.register_forward_pre_hook(remember, with_kwargs=True),
        *(b.register_forward_hook(noise) for b in blocks),
    ]


def _train(teacher: nn.Module, x: dict[str, torch.Tensor], ctx: dict[str, Any], **raw: Any) -> Any:
    return distill.apply(
        teacher,
        _pass(layers=[0, 3], epochs=1, lr=3e-3, batch_size=16, **raw),
        PassContext(seed=0, index=0, train_data=_data(x), output="last_hidden_state", **ctx),
    )


EMBEDDING = Embedding()
TASK = task_objective(EMBEDDING)


@pytest.mark.parametrize("loss", ["cosine", "mse"])
def test_the_padded_positions_do_not_change_what_the_student_learns(loss: str) -> None:
    teacher, x = _bert(), _padded(48, seed=1)
    with torch.no_grad():
        clean = teacher(**x).last_hidden_state
    handles = _noisy_padding(teacher)
    try:
        with torch.no_grad():
            noisy = teacher(**x).last_hidden_state
        real = x["attention_mask"].bool()
        # the hooks change the teacher at the padded positions only
        assert torch.equal(noisy[real], clean[real])
        assert not torch.allclose(noisy[~real], clean[~real])
        for_task = _train(teacher, x, TASK, loss=loss, hidden=1.0)
        for_nothing = _train(teacher, x, {}, loss=loss, hidden=1.0)
    finally:
        for h in handles:
            h.remove()
    reference = _train(teacher, x, TASK, loss=loss, hidden=1.0).replacement.state_dict()
    untouched = _train(teacher, x, {}, loss=loss, hidden=1.0).replacement.state_dict()
    # the task's loss (masked per-token terms, pooled term) never sees the padding: the
    # student trained on a teacher with noisy padding is the same, weight for weight
    for name, value in for_task.replacement.state_dict().items():
        assert torch.allclose(value, reference[name], atol=1e-6), name
    # without a task every position counts, the padding too (as before the task was
    # passed on): the noise changes the student
    changed = [
        name
        for name, value in for_nothing.replacement.state_dict().items()
        if not torch.allclose(value, untouched[name], atol=1e-4)
    ]
    assert changed
    assert for_task.details["objective"] == {"pooled": True, "mask": "attention_mask"}
    assert for_nothing.details["objective"] == {"pooled": False, "mask": None}


def test_an_embedding_task_gives_the_pass_its_pooling_and_mask_and_no_other_task_does() -> None:
    objective = task_objective(Embedding(pooling="cls", mask="mask"))
    assert objective["mask"] == "mask"
    states = torch.arange(24.0).reshape(2, 3, 4)
    assert torch.equal(objective["pool"](states, {"mask": torch.ones(2, 3)}), states[:, 0])
    assert task_objective(Classification()) == {}
    assert task_objective(None) == {}


def test_outputs_without_tokens_or_inputs_without_the_mask_train_as_without_a_task() -> None:
    # (samples, dim) outputs: the pooled embedding is the output itself, no term added,
    # nothing masked; the student is the one trained without the task, weight for weight
    teacher = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4)).eval()
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(1))

    def data() -> Any:
        yield x, None

    config = _pass(width=0.5, loss="cosine", epochs=2, lr=3e-3)
    found = [
        distill.apply(teacher, config, PassContext(seed=0, index=0, train_data=data, **ctx))
        for ctx in (TASK, {})
    ]
    for name, value in found[0].replacement.state_dict().items():
        assert torch.equal(value, found[1].replacement.state_dict()[name]), name
    assert found[0].details["objective"] == {"pooled": False, "mask": None}
    # token states but no input named task.mask: every position counts, the pooled
    # term (a mean over all tokens, as the gate pools them) is added
    bert, tokens = _bert(), _padded(16, seed=2)
    record = _train(bert, {"input_ids": tokens["input_ids"]}, TASK, loss="cosine")
    assert record.details["objective"] == {"pooled": True, "mask": None}


def test_a_mask_of_another_shape_than_the_token_states_is_a_data_error() -> None:
    states = torch.zeros(2, 5, 3)
    with pytest.raises(DataError, match="'attention_mask' has shape \\(2, 4\\)"):
        distill.token_weights({"attention_mask": torch.ones(2, 4)}, "attention_mask", states)
    assert distill.token_weights({"attention_mask": torch.ones(2, 5)}, None, states) is None
