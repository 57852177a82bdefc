"""Model sources beyond files of weights: torch.export programs and Hugging Face folders.

Each loads, runs like the model that was saved, and rebuilds from the packed file the
gate ships. The Hugging Face ones import transformers (seconds): slow-marked.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from ci_compress.config import HuggingFaceConfig, ModelSource
from ci_compress.demo.models import digits_mlp
from ci_compress.errors import ArtifactError, ConfigError
from ci_compress.layers.outputs import select_output
from ci_compress.loading.models import load_model_file, model_factory
from ci_compress.packing.file import load_packed, pack
from ci_compress.passes.base import PassContext
from ci_compress.passes.quantize import QuantizeConfig
from ci_compress.passes.quantize import apply as quantize


def test_a_torch_export_program_loads_runs_and_ships(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = digits_mlp().eval()
    x = torch.rand(5, 64)
    program = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(tmp_path / "m.pt2"))
    source = ModelSource(path="m.pt2")
    loaded = load_model_file(tmp_path / "m.pt2", source, base_dir=tmp_path)
    assert loaded.kind == "export"
    loaded.module.eval()  # a bare exported graph refuses this
    with torch.inference_mode():
        assert torch.equal(loaded.module(x), model(x))
        assert loaded.module(torch.rand(17, 64)).shape == (17, 10)
    info = pack(copy.deepcopy(loaded.module), tmp_path / "s.ccz")
    rebuilt, _ = load_packed(tmp_path / "s.ccz", factory=model_factory(source, tmp_path))
    with torch.inference_mode():
        assert torch.equal(rebuilt(x), model(x))
    assert info.file_bytes > 0
    (tmp_path / "bad.pt2").write_bytes(b"PK\x03\x04 not a program")
    with pytest.raises(ArtifactError):
        load_model_file(tmp_path / "bad.pt2", ModelSource(path="bad.pt2"))


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        num_labels=3,
    )
    folder = tmp_path_factory.mktemp("tiny-bert")
    transformers.BertForSequenceClassification(config).eval().save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_a_hugging_face_folder_loads_offline_and_ships(tiny_bert: Path, tmp_path: Path) -> None:
    source = ModelSource(
        path=str(tiny_bert), hf=HuggingFaceConfig(auto_class="AutoModelForSequenceClassification")
    )
    loaded = load_model_file(tiny_bert, source)
    assert loaded.kind == "huggingface" and not loaded.module.training
    assert loaded.file_bytes == (tiny_bert / "model.safetensors").stat().st_size
    ids = torch.randint(0, 50, (4, 8))
    batch = {"input_ids": ids, "attention_mask": torch.ones(4, 8, dtype=torch.long)}
    with torch.inference_mode():
        logits = select_output(loaded.module(**batch))
    assert logits.shape == (4, 3)
    student = copy.deepcopy(loaded.module)
    record = quantize(student, QuantizeConfig(), PassContext(seed=0, index=0))
    # q, k, v, attention out, intermediate, output, pooler, classifier and the word,
    # position and token-type embedding tables (int8 rows)
    assert len(record.modules) == 11
    pack(student, tmp_path / "s.ccz", level=3)
    rebuilt, _ = load_packed(tmp_path / "s.ccz", factory=model_factory(source))
    with torch.inference_mode():
        assert torch.equal(select_output(rebuilt(**batch)), select_output(student(**batch)))


@pytest.mark.slow
def test_hugging_face_errors_name_the_field(tiny_bert: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load_model_file(
            tiny_bert,
            ModelSource(path=str(tiny_bert), hf=HuggingFaceConfig(auto_class="AutoModelForMagic")),
        )
    assert (
        str(e.value) == "model.hf.auto_class: transformers has no model class 'AutoModelForMagic'"
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text((tiny_bert / "config.json").read_text())
    with pytest.raises(ArtifactError, match="holds config.json but no weights"):
        load_model_file(empty, ModelSource(path=str(empty)))
    weights = tmp_path / "w.safetensors"
    weights.write_bytes((tiny_bert / "model.safetensors").read_bytes())
    with pytest.raises(
        ConfigError, match="model.hf: is set, but model.path w.safetensors is a file"
    ):
        load_model_file(weights, ModelSource(path=str(weights), hf=HuggingFaceConfig()))
    with pytest.raises(
        ArtifactError, match=r"has no weights for \d+ tensor\(s\) transformers.GPT2Model needs"
    ):
        load_model_file(
            tiny_bert,
            ModelSource(path=str(tiny_bert), hf=HuggingFaceConfig(auto_class="GPT2Model")),
        )


@pytest.mark.slow
def test_a_head_missing_from_the_folder_is_not_filled_with_random_weights(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
    )
    transformers.BertModel(config).save_pretrained(tmp_path)  # a base model, no classifier
    source = ModelSource(
        path=str(tmp_path), hf=HuggingFaceConfig(auto_class="AutoModelForSequenceClassification")
    )
    with pytest.raises(
        ArtifactError,
        match=r"no weights for 2 tensor\(s\) .* \(classifier.bias, classifier.weight\)",
    ):
        load_model_file(tmp_path, source)
    assert load_model_file(tmp_path, ModelSource(path=str(tmp_path))).kind == "huggingface"


def test_exports_of_a_keyword_input_model_are_checked(tmp_path: Path) -> None:
    from ci_compress.packing.export import export_all

    class Tagger(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = torch.nn.Embedding(20, 8)
            self.head = torch.nn.Linear(8, 3)

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict:
            h = self.emb(input_ids) * attention_mask[..., None]
            return {"logits": self.head(h.mean(1)), "hidden": h}

    torch.manual_seed(0)
    model = Tagger().eval()
    batch = {"input_ids": torch.randint(0, 20, (6, 5)), "attention_mask": torch.ones(6, 5)}
    result = export_all(
        model, ["torchscript", "onnx"], tmp_path, "s", batch, lambda: [(batch, None)]
    )
    assert result["torchscript"]["status"] == "ok", result
    assert result["torchscript"]["agreement"] == 1.0 and result["torchscript"]["samples"] == 6
    # keyword inputs export to ONNX too (one graph input per keyword, batch left free)
    assert result["onnx"]["status"] == "ok", result
    assert result["onnx"]["agreement"] == 1.0 and result["onnx"]["max_abs_diff"] < 1e-5
