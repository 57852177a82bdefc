"""The gate's evaluation pass does each piece of work once (benchmarks/holdout_scale.py
times it against a bare inference loop): the target checked once per batch, eval()
only when a module trains, macro-F1 to the same bits as np.mean, the torch.ao flag
read from the class."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from ci_compress.config import DataSource
from ci_compress.errors import DataError
from ci_compress.evaluation import tasks
from ci_compress.evaluation.measure import evaluate
from ci_compress.evaluation.metrics import score
from ci_compress.layers.inference import has_torch_ao_quantized
from ci_compress.loading.data import Dataset, load_dataset


class CountingClassification(tasks.Classification):
    calls: int = 0

    def check_target(self, target: torch.Tensor | None, where: str) -> None:
        self.calls += 1
        super().check_target(target, where)


def _folder(tmp_path: Any, y: np.ndarray) -> Any:
    folder = tmp_path / "holdout"
    folder.mkdir()
    rng = np.random.default_rng(0)
    np.save(folder / "x.npy", rng.standard_normal((len(y), 4), dtype=np.float32))
    np.save(folder / "y.npy", y)
    return folder


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()


def test_the_target_is_checked_once_per_batch_when_the_holdout_already_checks_it(
    tmp_path: Any,
) -> None:
    folder = _folder(tmp_path, np.arange(100) % 3)
    task = CountingClassification()
    ds = load_dataset(
        DataSource(path=str(folder)), tmp_path, field="data.holdout", check_target=task.check_target
    )
    models = {"teacher": _model(), "student": _model()}
    result, _ = evaluate(models, ds, batch_size=16, task=task)
    assert result["student"].samples == 100
    assert task.calls == 7  # ceil(100 / 16) batches, once each (twice before)

    other = CountingClassification()  # a holdout opened without this task's check
    plain = load_dataset(DataSource(path=str(folder)), tmp_path, field="data.holdout")
    evaluate(models, plain, batch_size=16, task=other)
    assert other.calls == 7  # the pass checks every batch itself


def test_a_bad_target_is_still_refused_with_the_same_message(tmp_path: Any) -> None:
    folder = _folder(tmp_path, np.array([0, 1, -2, 1]))
    task = tasks.Classification()
    models = {"teacher": _model(), "student": _model()}
    checked = load_dataset(
        DataSource(path=str(folder)), tmp_path, field="data.holdout", check_target=task.check_target
    )
    with pytest.raises(DataError, match=r"data.holdout batch 0: y contains negative labels \(-2\)"):
        evaluate(models, checked, batch_size=16, task=task)
    plain = load_dataset(DataSource(path=str(folder)), tmp_path, field="data.holdout")
    with pytest.raises(DataError, match=r"^data.holdout: y contains negative labels \(-2\)"):
        evaluate(models, plain, batch_size=16, task=task)


class CountingTrain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.5))
        self.train_calls = 0

    def train(self, mode: bool = True) -> CountingTrain:
        self.train_calls += 1
        return super().train(mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def test_eval_mode_is_set_only_on_a_model_that_has_a_training_module() -> None:
    x, y = torch.randn(20, 4), torch.arange(20) % 3
    ds = Dataset(name="t", field="data.holdout", _tensors=(x, y))
    ready, half = CountingTrain().eval(), CountingTrain().eval()
    half.body[1].train()  # one module left in training mode (dropout on)
    ready.train_calls = half.train_calls = 0
    first = score({"teacher": ready, "student": half}, ds, batch_size=8)
    assert ready.train_calls == 0  # already in eval mode: not set again
    assert half.train_calls == 1 and not any(m.training for m in half.modules())
    again = score({"teacher": ready, "student": half}, ds, batch_size=8)
    assert half.train_calls == 1  # now in eval mode: not set again
    assert first["student"].correct == again["student"].correct  # dropout off both times


def test_macro_f1_has_the_bits_of_np_mean_over_the_seen_labels() -> None:
    rng = np.random.default_rng(3)
    for _ in range(200):
        k = int(rng.integers(1, 40))
        total = rng.integers(0, 50, k)
        predicted = rng.integers(0, 50, int(rng.integers(1, 40)))
        correct = np.minimum(total, rng.integers(0, 50, k))
        n = max(len(correct), len(total), len(predicted))
        tp, t, p = (np.pad(a, (0, n - len(a))) for a in (correct, total, predicted))
        seen = (t + p) > 0
        want = float(np.mean(2.0 * tp[seen] / (t[seen] + p[seen]))) if seen.any() else 0.0
        assert tasks._macro_f1(correct, total, predicted) == want  # exactly


@pytest.mark.filterwarnings("ignore")  # torch.ao is deprecated
def test_the_torch_ao_kernel_flag_is_read_from_the_module_class() -> None:
    class Int8Layer(nn.Module):
        uses_torch_ao_kernels = True

    plain = nn.Sequential(nn.Linear(2, 2))
    assert not has_torch_ao_quantized([plain])
    assert has_torch_ao_quantized([plain, nn.Sequential(nn.Linear(2, 2), Int8Layer())])
    dynamic = torch.ao.quantization.quantize_dynamic(
        nn.Sequential(nn.Linear(4, 4)), {nn.Linear}, dtype=torch.qint8
    )
    assert has_torch_ao_quantized([dynamic])  # torch.ao's own modules, by their module
