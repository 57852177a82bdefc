"""Each pass's measured effect on the trained demo MLP and CNN (accuracy on the digits
test split, measured on the model rebuilt from its .ccz file)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from ci_compress.errors import ConfigError
from ci_compress.layers import modules
from tests.helpers.passes_support import accuracy, apply, params, ship, split, teacher

KINDS = ["mlp", "cnn"]


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_gradual_prune_with_fine_tuning_recovers_accuracy_at_80_percent(
    kind: str, tmp_path: Path
) -> None:
    base = accuracy(teacher(kind))
    one_shot, _ = apply(teacher(kind), {"type": "prune", "amount": 0.8})
    tuned, (record,) = apply(
        teacher(kind),
        {"type": "prune", "amount": 0.8, "steps": 4, "fine_tune_epochs": 2, "lr": 1e-3},
    )
    assert record.details["sparsity"] == pytest.approx(0.8, abs=1e-4)
    assert [round(s["sparsity"], 3) for s in record.details["schedule"]] == [0.463, 0.7, 0.787, 0.8]
    reloaded, _ = ship(tuned, tmp_path)
    ws = [m.weight for m in reloaded.modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    zeros = sum(int((w == 0).sum()) for w in ws) / sum(w.numel() for w in ws)
    assert zeros == pytest.approx(0.8, abs=1e-4)  # the mask held through fine-tuning
    acc = accuracy(reloaded)
    assert acc >= base - 1.0, (acc, base, accuracy(one_shot))


def test_fine_tuning_without_data_train_names_the_field() -> None:
    with pytest.raises(ConfigError) as e:
        apply(teacher("mlp"), {"type": "prune", "amount": 0.5, "fine_tune_epochs": 1}, train=False)
    assert str(e.value).startswith("data.train: passes[0] fine-tunes")


def test_fine_tuning_is_deterministic() -> None:
    cfg = {"type": "prune", "amount": 0.5, "steps": 2, "fine_tune_epochs": 1, "max_steps": 15}
    a, _ = apply(teacher("mlp"), cfg)
    b, _ = apply(teacher("mlp"), cfg)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


@pytest.mark.parametrize("kind", KINDS)
def test_static_int8_keeps_accuracy_within_one_point(kind: str, tmp_path: Path) -> None:
    model = teacher(kind)
    base = accuracy(model)
    q, (record,) = apply(model, {"type": "quantize", "scheme": "int8-static"})
    reloaded, _info = ship(q, tmp_path)
    kinds = {type(m) for m in reloaded.modules()}
    assert modules.StaticInt8Linear in kinds
    assert (modules.StaticInt8Conv2d in kinds) == (kind == "cnn")
    assert abs(accuracy(reloaded) - base) <= 1.0
    assert record.details["ranges"]


@pytest.mark.parametrize("scheme", ["int8-weight-only", "fp16", "bf16", "int8-static"])
@pytest.mark.parametrize("kind", KINDS)
def test_weight_schemes_shrink_the_file_and_keep_accuracy(
    kind: str, scheme: str, tmp_path: Path
) -> None:
    fp32, fp32_info = ship(teacher(kind), tmp_path / "fp32")
    q, _ = apply(teacher(kind), {"type": "quantize", "scheme": scheme})
    reloaded, info = ship(q, tmp_path / "q")
    factor = 2 if scheme in ("fp16", "bf16") else 4
    assert info.file_bytes < fp32_info.file_bytes / factor * 1.25
    assert abs(accuracy(reloaded) - accuracy(fp32)) <= 1.5


def test_static_int8_without_calibration_data_names_the_field() -> None:
    with pytest.raises(ConfigError) as e:
        apply(teacher("mlp"), {"type": "quantize", "scheme": "int8-static"}, calibration=False)
    assert str(e.value).startswith("data.calibration: passes[0] uses scheme int8-static")


@pytest.mark.parametrize("kind", KINDS)
def test_kmeans_4_bits_leaves_at_most_16_values_per_layer_in_the_shipped_file(
    kind: str, tmp_path: Path
) -> None:
    model = teacher(kind)
    base = accuracy(model)
    clustered, _ = apply(model, {"type": "cluster", "bits": 4})
    reloaded, _info = ship(clustered, tmp_path)
    layers = [
        m
        for m in reloaded.modules()
        if isinstance(m, modules.ClusteredLinear | modules.ClusteredConv2d)
    ]
    assert len(layers) == (3 if kind == "mlp" else 4)
    for m in layers:
        assert m.indices.dtype == torch.uint8
        assert torch.unique(m.decoded_weight()).numel() <= 16
    assert accuracy(reloaded) >= base - 2.0


def test_kmeans_keeps_pruned_zeros_and_tunes_centroids(tmp_path: Path) -> None:
    model, (_, record) = apply(
        teacher("mlp"),
        {"type": "prune", "amount": 0.6},
        {"type": "cluster", "bits": 3, "fine_tune_epochs": 1, "max_steps": 10},
    )
    reloaded, _ = ship(model, tmp_path)
    for m in reloaded.modules():
        if isinstance(m, modules.ClusteredLinear):
            w = m.decoded_weight()
            assert float(m.codebook[0].detach()) == 0.0
            assert torch.unique(w).numel() <= 8
    w_all = torch.cat(
        [
            m.decoded_weight().reshape(-1)
            for m in reloaded.modules()
            if isinstance(m, modules.ClusteredLinear)
        ]
    )
    assert float((w_all == 0).float().mean()) == pytest.approx(0.6, abs=1e-3)
    assert record.details["fine_tune"]["steps"] == 10


def test_kmeans_bits_out_of_range_is_a_field_error() -> None:
    with pytest.raises(ConfigError) as e:
        apply(teacher("mlp"), {"type": "cluster", "bits": 0})
    assert str(e.value) == "passes[0].bits: must be in [1, 8], got 0"


@pytest.mark.parametrize("kind", KINDS)
def test_lowrank_reduces_parameters_and_keeps_outputs_close(kind: str, tmp_path: Path) -> None:
    model = teacher(kind)
    x = split("test")[0]
    with torch.no_grad():
        ref = model(x)
    base = accuracy(model)
    low, (record,) = apply(model, {"type": "lowrank", "energy": 0.95})
    reloaded, _ = ship(low, tmp_path)
    assert params(reloaded) < record.params_before
    with torch.no_grad():
        out = reloaded(x)
    assert float((out.argmax(1) == ref.argmax(1)).float().mean()) >= 0.97
    assert abs(accuracy(reloaded) - base) <= 2.0
    for name in record.modules:
        a, _b = reloaded.get_submodule(name)
        assert a.bias is None and a.weight.shape[0] == record.details["ranks"][name]["rank"]


def test_lowrank_skips_a_layer_it_cannot_shrink_and_says_so() -> None:
    _, (record,) = apply(teacher("mlp"), {"type": "lowrank", "rank_ratio": 0.9})
    # 0: rank 58 * (64 + 256) >= 64 * 256; 4: rank 9 * (128 + 10) < 128 * 10 still saves
    assert record.modules == ["4"]
    assert set(record.details["skipped"]) == {"0", "2"}


def test_lowrank_rank_larger_than_the_layer_is_a_field_error() -> None:
    with pytest.raises(ConfigError) as e:
        apply(teacher("mlp"), {"type": "lowrank", "rank": 100, "include": ["0"]})
    assert str(e.value).startswith("passes[0].rank: must be at most 64")


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"type": "prune", "amount": 1.5}, "passes[0].amount: must be in [0, 1), got 1.5"),
        ({"type": "lowrank", "energy": 1.5}, "passes[0].energy: must be in (0, 1], got 1.5"),
        (
            {"type": "distill", "width": 0.5, "alpha": 2},
            "passes[0].alpha: must be in [0, 1], got 2",
        ),
        ({"type": "distill"}, "passes[0]: give exactly one of student_factory, width or layers"),
        ({"type": "quantize", "scheme": "int4"}, "passes[0].scheme: must be one of"),
    ],
)
def test_bad_options_name_the_field(bad: dict, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        apply(teacher("mlp"), bad)
    assert str(e.value).startswith(message)


def _distill_pair(kind: str) -> tuple[float, float, int, int]:
    common = {"type": "distill", "width": 0.25, "epochs": 15}
    kd, (record,) = apply(teacher(kind), {**common, "alpha": 0.9, "temperature": 4.0})
    plain, _ = apply(teacher(kind), {**common, "alpha": 0.0})
    return accuracy(kd), accuracy(plain), record.params_before, record.params_after


@pytest.mark.slow
def test_distilled_cnn_student_is_four_times_smaller_and_close_to_the_teacher() -> None:
    # Measured honestly: since the width student starts from the teacher's kept weights
    # (structured pruning, issue 20), the same student trained on labels alone is as good
    # or better on digits (98.33 vs 97.78 distilled, teacher 98.9): soft targets do not
    # help a warm-started student here. Before, from a random start, distillation won.
    # The margin is 2 points (11 of the 540 test digits; one digit is 0.19 points): the
    # same seeds train to other weights on another CPU's float kernels. Measured: 97.78
    # against 98.9 (-1.1) on an AMD EPYC (AVX2), 97.59 against 99.26 (-1.67) on an
    # Intel Xeon (AVX-512), where the earlier 1.5-point margin failed.
    acc_kd, _acc_plain, before, after = _distill_pair("cnn")
    assert after < before / 4
    assert acc_kd >= accuracy(teacher("cnn")) - 2.0


@pytest.mark.slow
def test_distilled_mlp_student_is_four_times_smaller_and_close_to_the_teacher() -> None:
    # Measured honestly: on digits the MLP student trained on labels alone is as good or
    # better (96.30 vs 95.19 distilled, teacher 96.48); soft targets do not help here.
    acc_kd, _acc_plain, before, after = _distill_pair("mlp")
    assert after < before / 4
    assert acc_kd >= accuracy(teacher("mlp")) - 2.0


def test_distill_from_a_factory_and_without_train_data() -> None:
    _student, (record,) = apply(
        teacher("mlp"),
        {
            "type": "distill",
            "student_factory": "ci_compress.demo.models:digits_mlp",
            "epochs": 1,
            "max_steps": 3,
        },
    )
    assert record.details["training"]["steps"] == 3
    with pytest.raises(ConfigError) as e:
        apply(teacher("mlp"), {"type": "distill", "width": 0.5}, train=False)
    assert str(e.value).startswith("data.train: passes[0] distills a student")
