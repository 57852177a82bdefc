"""Structured pruning and ``distill width:`` on any graph: ResNet-18, MiniLM, BERT heads."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from ci_compress.config import parse_config
from ci_compress.errors import ConfigError
from ci_compress.passes import distill, prune
from ci_compress.passes.base import PassContext
from tests.helpers.configs import base_config
from tests.helpers.real_models import digits_rgb32, minilm, resnet18


def _batches(x: Any, y: torch.Tensor, size: int = 32) -> Any:
    def gen() -> Any:
        for i in range(0, len(y), size):
            part = (
                {k: v[i : i + size] for k, v in x.items()}
                if isinstance(x, dict)
                else x[i : i + size]
            )
            yield part, y[i : i + size]

    return gen


def _pass(raw: dict[str, Any]) -> Any:
    return parse_config(base_config(passes=[raw])).passes[0]


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _flops(model: nn.Module, x: torch.Tensor) -> int:
    """Floating-point operations of one forward pass (counted, not timed: deterministic;
    the latency itself is measured by benchmarks/structured.py)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return int(counter.get_total_flops())


def test_resnet18_channels_tied_across_skips_shrink_and_its_compute_drops() -> None:
    model = resnet18().eval()
    x, y = digits_rgb32("train", 64)
    teacher = resnet18().eval()
    ctx = PassContext(seed=0, index=0, calibration_data=_batches(x, y))
    record = prune.apply(model, _pass({"type": "prune", "amount": 0.5, "structured": True}), ctx)
    assert _params(model) < 0.3 * _params(
        teacher
    )  # 11.18 M -> 2.80 M: channels halve, weights quarter
    # the residual stream of each stage is one group: every conv writing it has one width
    assert (
        model.conv1.out_channels
        == model.layer1[0].conv2.out_channels
        == model.layer1[1].conv2.out_channels
        == 32
    )
    assert model.layer2[0].downsample[0].out_channels == model.layer2[1].conv2.out_channels == 64
    assert model.layer2[0].downsample[1].num_features == 64 and model.bn1.num_features == 32
    assert model.fc.out_features == 10 and model.fc.in_features == 256
    assert record.details["skipped"]["fc"] == "output layer: its outputs are the model's outputs"
    assert record.details["layers"]["layer3.0.conv1"] == [256, 128]
    with torch.no_grad():
        assert model(x[:8]).shape == teacher(x[:8]).shape == (8, 10)
    # halving every width quarters the convolutions' work (3.17x lower latency measured)
    assert _flops(model, x[:4]) < 0.3 * _flops(teacher, x[:4])


@pytest.mark.slow
def test_minilm_whole_heads_and_ffn_neurons_leave_and_the_hidden_size_stays() -> None:
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(minilm()), local_files_only=True).eval()
    ids = torch.randint(1000, 5000, (6, 16), generator=torch.Generator().manual_seed(0))
    x = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    before = _params(model)
    with torch.no_grad():
        shape = model(**x).last_hidden_state.shape
    ctx = PassContext(
        seed=0, index=0, calibration_data=_batches(x, torch.zeros(6, dtype=torch.long))
    )
    record = prune.apply(model, _pass({"type": "prune", "amount": 0.5, "structured": True}), ctx)
    attn = model.encoder.layer[0].attention.self
    assert (attn.num_attention_heads, attn.attention_head_size, attn.all_head_size) == (6, 32, 192)
    assert attn.query.out_features == attn.key.out_features == attn.value.out_features == 192
    assert model.encoder.layer[0].attention.output.dense.in_features == 192
    assert model.encoder.layer[0].intermediate.dense.out_features == 768
    assert record.details["heads"] == {
        f"encoder.layer.{i}.attention.self": [12, 6] for i in range(6)
    }
    with torch.no_grad():
        out = model(**x)
    assert out.last_hidden_state.shape == shape and out.pooler_output.shape == (6, 384)
    assert _params(model) < before - 5_000_000  # 22.7 M -> 17.4 M: the embeddings stay


def test_multihead_attention_classifier_keeps_its_output_and_heads() -> None:
    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Linear(8, 32)
            self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
            self.head = nn.Linear(32, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.embed(x.view(len(x), 8, 8))
            return self.head(self.attn(h, h, h)[0].mean(1))

    model = Tiny().eval()
    x = torch.randn(16, 64)
    ctx = PassContext(
        seed=0, index=0, calibration_data=_batches(x, torch.zeros(16, dtype=torch.long))
    )
    prune.apply(model, _pass({"type": "prune", "amount": 0.5, "structured": True}), ctx)
    assert model.attn.num_heads == 4 and model.attn.embed_dim == 16 and model.attn.head_dim == 4
    assert model(x).shape == (16, 3)


def test_modules_that_break_the_graph_are_listed_in_one_error() -> None:
    class Hardcoded(nn.Module):  # forward hard-codes its width: pruning cannot shrink it
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(64, 16)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.fc(x)
            return h.narrow(1, 0, 16) * torch.ones(16)

    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = Hardcoded(), Hardcoded()
            self.out = nn.Linear(32, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(torch.cat([self.a(x), self.b(x)], 1))

    x = torch.randn(8, 64)
    ctx = PassContext(
        seed=0, index=0, calibration_data=_batches(x, torch.zeros(8, dtype=torch.long))
    )
    with pytest.raises(ConfigError) as e:
        prune.apply(Two().eval(), _pass({"type": "prune", "amount": 0.5, "structured": True}), ctx)
    text = str(e.value)
    assert text.startswith(
        "passes[0].include: structured pruning cannot handle 2 module(s): 'a.fc'"
    )
    assert "'b.fc'" in text and "exclude: ['a.fc', 'b.fc']" in (e.value.hint or "")


def test_structured_needs_an_example_batch_and_taylor_needs_train() -> None:
    ctx = PassContext(seed=0, index=0)
    with pytest.raises(ConfigError) as e:
        prune.apply(
            nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)),
            _pass({"type": "prune", "amount": 0.5, "structured": True}),
            ctx,
        )
    assert "config has no data.calibration or data.train" in str(e.value)
    assert _pass({"type": "prune", "amount": 0.5, "structured": True}).needs_data() == (
        ("data.calibration or data.train", "traces the model's graph on an example batch"),
    )
    taylor = _pass({"type": "prune", "amount": 0.5, "structured": True, "importance": "taylor"})
    assert taylor.needs_data() == (("data.train", "ranks channels by importance: taylor"),)
    with pytest.raises(ConfigError, match="set structured: true"):
        _pass({"type": "prune", "amount": 0.5, "importance": "taylor"})


def test_taylor_importance_keeps_the_channels_the_loss_needs() -> None:
    torch.manual_seed(0)
    x = torch.randn(256, 64)
    y = (x[:, 0] > 0).long()
    model = nn.Sequential(nn.Linear(64, 4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():  # neuron 1 carries the label; by magnitude it is the smallest
        model[0].weight.copy_(torch.zeros(4, 64))
        model[0].weight[0, 5] = model[0].weight[2, 6] = model[0].weight[3, 7] = 3.0
        model[0].weight[1, 0] = 0.5
        model[2].weight.copy_(torch.tensor([[0.1, -2.0, 0.1, 0.1], [0.1, 2.0, 0.1, 0.1]]))
    ctx = PassContext(seed=0, index=0, train_data=_batches(x, y))
    taylor = _pass({"type": "prune", "amount": 0.5, "structured": True, "importance": "taylor"})
    record = prune.apply(model, taylor, ctx)
    assert record.details["importance"] == "taylor"
    assert model[2].weight[:, 0].abs().max() == 2.0 or model[2].weight[:, 1].abs().max() == 2.0


def test_distill_width_derives_a_resnet18_student_by_pruning() -> None:
    x, y = digits_rgb32("train", 64)
    teacher = resnet18().eval()
    ctx = PassContext(seed=0, index=0, train_data=_batches(x, y))
    raw = {"type": "distill", "width": 0.5, "epochs": 1, "max_steps": 1, "batch_size": 32}
    record = distill.apply(teacher, _pass(raw), ctx)
    student = record.replacement
    assert student is not None and type(student).__name__ == "ResNet18"
    assert (
        student.layer2[0].conv1.out_channels == 64 and teacher.layer2[0].conv1.out_channels == 128
    )
    assert _params(student) < 0.3 * _params(teacher)
    assert student(x[:4]).shape == (4, 10)


def test_distill_width_on_a_minilm_sized_bert_classifier() -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=500,
        hidden_size=384,
        num_hidden_layers=2,
        num_attention_heads=12,
        intermediate_size=1536,
        num_labels=3,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    teacher = transformers.BertForSequenceClassification(config).eval()
    ids = torch.randint(5, 500, (32, 12), generator=torch.Generator().manual_seed(1))
    x = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    y = torch.randint(0, 3, (32,), generator=torch.Generator().manual_seed(2))
    ctx = PassContext(seed=0, index=0, train_data=_batches(x, y, 16), output="logits")
    raw = {"type": "distill", "width": 0.5, "epochs": 1, "max_steps": 2, "batch_size": 16}
    record = distill.apply(teacher, _pass(raw), ctx)
    student = record.replacement
    assert student is not None
    attn = student.bert.encoder.layer[1].attention.self
    assert attn.num_attention_heads == 6 and attn.query.out_features == 192
    assert student.bert.encoder.layer[1].intermediate.dense.out_features == 768
    assert student.classifier.out_features == 3
    assert student(**x).logits.shape == (32, 3)
    assert teacher.bert.encoder.layer[1].attention.self.num_attention_heads == 12  # untouched


def test_gradual_structured_pruning_of_minilm_removes_heads_on_the_schedule() -> None:
    # torch-pruning schedules head removal against the heads left, not the original
    # count: unadjusted, three steps of a 0.5 schedule left 1 head of 12 per layer
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(minilm()), local_files_only=True).eval()
    ids = torch.randint(1000, 5000, (6, 16), generator=torch.Generator().manual_seed(0))
    x = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    ctx = PassContext(
        seed=0, index=0, calibration_data=_batches(x, torch.zeros(6, dtype=torch.long))
    )
    raw = {"type": "prune", "amount": 0.5, "structured": True, "steps": 3}
    record = prune.apply(model, _pass(raw), ctx)
    # removed after step t: ceil(12 * 0.5 * (1 - (1 - t/3)^3)) = 5, 6, 6 per layer
    assert [step["heads"] for step in record.details["schedule"]] == [42, 36, 36]
    params = [step["parameters"] for step in record.details["schedule"]]
    assert params[0] > params[1] > params[2]  # FFN neurons leave at every step
    attn = model.encoder.layer[0].attention.self
    assert (attn.num_attention_heads, attn.all_head_size) == (6, 192)
    assert model.encoder.layer[0].intermediate.dense.out_features == 768  # as one step
    with torch.no_grad():
        assert model(**x).last_hidden_state.shape == (6, 16, 384)


def test_gpt2_ffn_and_residual_width_shrink_and_the_pruned_model_ships(tmp_path: Any) -> None:
    # GPT-2's layers are Hugging Face Conv1D (a Linear with its weight transposed) and its
    # forward concatenates into a key/value cache: the tracer refused it ("unsupported
    # operand type(s) for +: 'int' and 'NoneType'") before Conv1D became nn.Linear and
    # the graph was traced without the cache
    import transformers

    from ci_compress.packing.file import load_packed, pack

    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=256, n_positions=64, n_embd=64, n_layer=2, n_head=4)
    model = transformers.GPT2LMHeadModel(config).eval()
    ids = torch.randint(0, 256, (4, 16), generator=torch.Generator().manual_seed(0))
    x = {"input_ids": ids}
    before = _params(model)
    ctx = PassContext(
        seed=0, index=0, calibration_data=_batches(x, torch.zeros(4, dtype=torch.long))
    )
    record = prune.apply(model, _pass({"type": "prune", "amount": 0.5, "structured": True}), ctx)
    block = model.transformer.h[0]
    assert isinstance(block.mlp.c_fc, nn.Linear) and block.mlp.c_fc.out_features == 128
    assert block.attn.c_attn.out_features == 192  # fused q/k/v: heads kept
    assert block.attn.c_attn.in_features == 32 and model.transformer.wte.weight.shape == (256, 32)
    assert record.details["skipped"]["transformer.h.0.attn.c_attn"].startswith("fused q/k/v")
    assert len(record.details["conv1d_to_linear"]) == 8
    assert model.lm_head.weight is model.transformer.wte.weight  # tied again
    assert _params(model) < 0.4 * before
    assert model.config.use_cache is True  # restored after tracing
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape == (4, 16, 256)
    pack(model, tmp_path / "s.ccz", example=x)  # ships its graph: no factory
    reloaded, _ = load_packed(tmp_path / "s.ccz")
    with torch.no_grad():
        out = reloaded(input_ids=ids)
    out = out["logits"] if isinstance(out, dict) else getattr(out, "logits", out)
    assert torch.allclose(out, logits, atol=1e-5)


def test_gradual_head_pruning_refuses_mixed_head_counts_with_the_fix() -> None:
    # torch-pruning takes one per-step head fraction for every attention module, so a
    # model whose layers have different head counts cannot follow one cubic schedule
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=200,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=32,
    )
    torch.manual_seed(0)
    model = transformers.BertModel(config).eval()
    attn = model.encoder.layer[1].attention.self
    attn.num_attention_heads, attn.attention_head_size = 2, 16  # same width, 2 heads
    ids = torch.randint(5, 200, (4, 8), generator=torch.Generator().manual_seed(0))
    x = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    ctx = PassContext(
        seed=0, index=0, calibration_data=_batches(x, torch.zeros(4, dtype=torch.long))
    )
    raw = {"type": "prune", "amount": 0.5, "structured": True, "steps": 2}
    with pytest.raises(ConfigError) as err:
        prune.apply(model, _pass(raw), ctx)
    assert err.value.path == "passes[0].steps"
    assert "[2, 4]" in str(err.value) and err.value.hint == "use steps: 1 for this model"
    # one step has no schedule to share: the same model prunes
    record = prune.apply(model, _pass({**raw, "steps": 1}), ctx)
    assert record.details["heads"]
