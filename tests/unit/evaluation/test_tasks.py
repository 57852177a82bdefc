"""Tasks turn outputs and targets into per-sample scores and named metrics.

Each aggregate is checked against an independent computation (scikit-learn or torch
directly), each task against the config's table of metric names, and each bad input
against its error and exit code.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score, mean_absolute_error, mean_squared_error, r2_score

from ci_compress.config.task import TASK_METRICS, TaskConfig
from ci_compress.errors import ConfigError, DataError, ModelOutputError
from ci_compress.evaluation import tasks
from ci_compress.evaluation.metrics import score
from ci_compress.evaluation.statistics import (
    is_binary,
    paired_score_statistics,
    paired_statistics,
)
from ci_compress.loading.data import Dataset


def run(task: tasks.Task, batches: list[tuple[dict[str, torch.Tensor], Any, Any]]) -> dict:
    acc = task.start(["teacher", "student"], "teacher", "data.holdout")
    for outputs, target, inputs in batches:
        acc.add(outputs, target, inputs)
    return acc.finish()


def test_every_task_reports_exactly_the_metrics_the_config_knows() -> None:
    made = {
        "classification": tasks.Classification(top_k=2),
        "multilabel": tasks.Multilabel(),
        "regression": tasks.Regression(),
        "embedding": tasks.Embedding(),
        "language-model": tasks.LanguageModel(),
    }
    assert set(made) == set(TASK_METRICS)
    g = torch.Generator().manual_seed(0)
    samples = {
        "classification": (torch.randn(6, 3, generator=g), torch.tensor([0, 1, 2, 0, 1, 2])),
        "multilabel": (torch.randn(6, 3, generator=g), torch.randint(0, 2, (6, 3), generator=g)),
        "regression": (torch.randn(6, generator=g), torch.randn(6, generator=g)),
        "embedding": (torch.randn(6, 4, 5, generator=g), None),
        "language-model": (torch.randn(6, 4, 7, generator=g), torch.randint(0, 7, (6, 4))),
    }
    for name, task in made.items():
        out, target = samples[name]
        result = run(task, [({"teacher": out, "student": out * 0.9}, target, torch.zeros(6, 4))])
        assert set(result["student"].metrics) == set(TASK_METRICS[name]), name
        assert (
            task.metric_directions()
            == TASK_METRICS[name]
            == TaskConfig(type=name).metric_directions()
        )
        assert result["student"].scores.shape == (6,)
        assert task.primary in TASK_METRICS[name]


def test_classification_top1_topk_and_macro_f1() -> None:
    y = torch.tensor([0, 1, 2, 2, 1, 0, 2])
    teacher = F.one_hot(y, 3).float()
    student = torch.tensor(
        [[3, 2, 1], [1, 3, 2], [3, 1, 2], [1, 2, 3], [2, 1, 3], [1, 3, 2], [1, 2, 3]],
        dtype=torch.float,
    )
    result = run(
        tasks.Classification(top_k=2),
        [({"teacher": teacher[:4], "student": student[:4]}, y[:4], None),
         ({"teacher": teacher[4:], "student": student[4:]}, y[4:], None)],
    )  # fmt: skip
    s = result["student"]
    pred = student.argmax(1)
    assert s.metrics["accuracy"] == int((pred == y).sum()) / 7
    assert list(s.scores) == (pred == y).float().tolist()
    assert s.metrics["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    top2 = student.topk(2, dim=1).indices
    assert s.metrics["top_k_accuracy"] == pytest.approx(
        float((top2 == y[:, None]).any(1).float().mean())
    )
    assert s.metrics["agreement"] == pytest.approx(float((pred == y).float().mean()))
    assert list(s.class_total) == [2, 2, 3]
    assert result["teacher"].metrics["accuracy"] == 1.0


def test_classification_counts_over_batches_whose_label_range_grows() -> None:
    """Predictions and labels are kept in the smallest integer type that holds them: a
    later batch with labels past 255 widens the kept ones, and every count stays that
    of a direct computation over the whole holdout."""
    g = torch.Generator().manual_seed(3)
    classes = 300
    y = torch.cat([torch.randint(0, 200, (50,), generator=g), torch.randint(0, classes, (80,))])
    teacher = F.one_hot(y, classes).float()
    student = torch.randn(130, classes, generator=g)
    student[::3] = teacher[::3]  # a third certainly right
    result = run(
        tasks.Classification(),
        [({"teacher": teacher[a:b], "student": student[a:b]}, y[a:b], None)
         for a, b in ((0, 50), (50, 90), (90, 130))],
    )  # fmt: skip
    s = result["student"]
    pred = student.argmax(1)
    hit = (pred == y).numpy()
    assert s.samples == 130 and list(s.scores) == hit.astype(float).tolist()
    assert list(s.class_total) == np.bincount(y.numpy(), minlength=classes).tolist()
    assert list(s.class_correct) == np.bincount(y.numpy()[hit], minlength=classes).tolist()
    assert s.metrics["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert s.metrics["agreement"] == pytest.approx(float(hit.mean()))
    assert result["teacher"].metrics["accuracy"] == 1.0


def test_column_widens_for_wider_integers_and_keeps_its_type_otherwise() -> None:
    c = tasks.Column()
    c.append(np.array([1, 255], dtype=np.uint8))
    c.append(np.array([256, 70000], dtype=np.uint32))
    c.append(np.array([3], dtype=np.uint8))
    assert c.values().tolist() == [1, 255, 256, 70000, 3]
    f = tasks.Column()
    f.append(np.array([0.5], dtype=np.float32))
    f.append(np.array([1.0 / 3.0]))  # a float column keeps the type it started with
    assert f.values().dtype == np.float32


def test_classification_errors_keep_their_messages() -> None:
    task = tasks.Classification()
    with pytest.raises(DataError, match="y has dtype torch.float32, expected integer class labels"):
        task.check_target(torch.zeros(3), "data.holdout")
    with pytest.raises(DataError, match=r"y contains negative labels \(-1\)"):
        task.check_target(torch.tensor([0, -1]), "data.holdout")
    with pytest.raises(DataError, match="needs a target"):
        task.check_target(None, "data.holdout")
    with pytest.raises(ConfigError) as e:
        run(
            tasks.Classification(top_k=5),
            [
                (
                    {"teacher": torch.ones(2, 3), "student": torch.ones(2, 3)},
                    torch.tensor([0, 1]),
                    None,
                )
            ],
        )
    assert str(e.value).startswith("task.top_k: is 5, but the teacher model has only 3 outputs")
    nan = torch.ones(2, 3)
    nan[0, 0] = float("nan")
    with pytest.raises(
        ModelOutputError, match="the student model produced NaN or infinite outputs"
    ):
        run(task, [({"teacher": torch.ones(2, 3), "student": nan}, torch.tensor([0, 1]), None)])


def test_multilabel_sample_f1_and_exact_match() -> None:
    y = torch.tensor([[1, 0, 1], [0, 0, 0], [1, 1, 0], [0, 1, 1]])
    logits = torch.tensor([[2.0, -1, 3], [-1, -2, -3], [1, -1, -1], [-1, 1, -1]])
    result = run(tasks.Multilabel(), [({"teacher": y * 4.0 - 2, "student": logits}, y, None)])
    s = result["student"]
    pred = (logits.sigmoid() >= 0.5).int()
    assert s.metrics["f1"] == pytest.approx(f1_score(y, pred, average="samples", zero_division=1.0))
    assert s.metrics["exact_match"] == 0.5
    assert result["teacher"].metrics["f1"] == 1.0
    with pytest.raises(DataError, match="values other than 0 and 1"):
        tasks.Multilabel().check_target(torch.tensor([[0, 2]]), "data.holdout")


def test_regression_mae_rmse_r2_match_scikit_learn() -> None:
    g = torch.Generator().manual_seed(1)
    y = torch.randn(50, generator=g)
    teacher = y + 0.1 * torch.randn(50, generator=g)
    student = y + 0.3 * torch.randn(50, generator=g)
    result = run(
        tasks.Regression(),
        [({"teacher": teacher[:20, None], "student": student[:20, None]}, y[:20], None),
         ({"teacher": teacher[20:, None], "student": student[20:, None]}, y[20:], None)],
    )  # fmt: skip
    s = result["student"].metrics
    assert s["mae"] == pytest.approx(mean_absolute_error(y, student))
    assert s["rmse"] == pytest.approx(math.sqrt(mean_squared_error(y, student)))
    assert s["r2"] == pytest.approx(r2_score(y, student))
    assert np.allclose(result["student"].scores, (student - y).abs().numpy())
    multi = torch.randn(8, 2, generator=g)
    r = run(tasks.Regression(), [({"teacher": multi, "student": multi * 0.5}, multi + 1, None)])
    assert r["student"].metrics["r2"] == pytest.approx(r2_score(multi + 1, multi * 0.5))
    with pytest.raises(ModelOutputError, match=r"returned shape \(8, 3\), the target has \(8, 2\)"):
        run(
            tasks.Regression(),
            [({"teacher": torch.ones(8, 3), "student": torch.ones(8, 3)}, multi, None)],
        )
    with pytest.raises(DataError, match="NaN or infinite"):
        tasks.Regression().check_target(torch.tensor([1.0, float("inf")]), "data.holdout")


def test_embedding_cosine_mean_pooling_under_the_mask_and_neighbours() -> None:
    g = torch.Generator().manual_seed(2)
    states = torch.randn(10, 6, 8, generator=g)
    mask = torch.ones(10, 6, dtype=torch.long)
    mask[:, 4:] = 0  # padding: must not count
    noisy = states.clone()
    noisy[:, 4:] = 100.0  # garbage at padded positions only
    inputs = {"input_ids": torch.zeros(10, 6, dtype=torch.long), "attention_mask": mask}
    result = run(tasks.Embedding(), [({"teacher": states, "student": noisy}, None, inputs)])
    assert result["student"].metrics["cosine"] == pytest.approx(1.0)
    assert result["student"].metrics["neighbour_agreement"] == 1.0
    other = torch.randn(10, 6, 8, generator=g)
    r = run(
        tasks.Embedding(pooling="cls", neighbours=4),
        [({"teacher": states, "student": other}, None, inputs)],
    )
    expect = F.cosine_similarity(states[:, 0].double(), other[:, 0].double(), dim=1)
    assert np.allclose(r["student"].scores, expect.numpy())
    with pytest.raises(ConfigError, match="task.pooling: is none"):
        run(
            tasks.Embedding(pooling="none"),
            [({"teacher": states, "student": states}, None, inputs)],
        )


def test_embedding_keeps_only_the_first_neighbours_samples() -> None:
    task = tasks.Embedding(neighbours=5)
    acc = task.start(["teacher", "student"], "teacher", "data.holdout")
    for _ in range(4):
        e = torch.randn(3, 4)
        acc.add({"teacher": e, "student": e}, None, torch.zeros(3, 1))
    assert acc.n_kept == 5  # type: ignore[attr-defined]
    assert sum(len(t) for t in acc.kept["student"]) == 5  # type: ignore[attr-defined]
    result = acc.finish()
    assert (
        result["student"].samples == 12 and result["student"].metrics["neighbour_agreement"] == 1.0
    )


def test_language_model_nll_perplexity_and_agreement() -> None:
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 11, (4, 7), generator=g)
    mask = torch.ones(4, 7, dtype=torch.long)
    mask[0, 5:] = 0
    teacher = torch.randn(4, 7, 11, generator=g)
    student = teacher + 0.5 * torch.randn(4, 7, 11, generator=g)
    inputs = {"input_ids": ids, "attention_mask": mask}
    result = run(tasks.LanguageModel(), [({"teacher": teacher, "student": student}, None, inputs)])
    labels = ids.masked_fill(mask == 0, -100)[:, 1:]
    nll = F.cross_entropy(student[:, :-1].reshape(-1, 11), labels.reshape(-1), ignore_index=-100)
    s = result["student"]
    assert s.metrics["nll"] == pytest.approx(float(nll), rel=1e-6)
    assert s.metrics["perplexity"] == pytest.approx(math.exp(float(nll)), rel=1e-6)
    per0 = F.cross_entropy(student[0, :4], ids[0, 1:5])
    assert s.scores[0] == pytest.approx(float(per0), rel=1e-6)
    valid = labels != -100
    agree = (student[:, :-1].argmax(-1) == teacher[:, :-1].argmax(-1)) & valid
    assert s.metrics["next_token_agreement"] == pytest.approx(float(agree.sum() / valid.sum()))
    assert result["teacher"].metrics["next_token_agreement"] == 1.0
    with pytest.raises(DataError, match="takes its labels from the input 'input_ids'"):
        run(tasks.LanguageModel(), [({"teacher": teacher, "student": student}, None, {"ids": ids})])


CUSTOM = """
import torch

def iou(output, target):
    return (output.argmax(1) == target).float()

def wrong_shape(output, target):
    return output

def with_nan(output, target):
    s = torch.zeros(len(output))
    s[0] = float("nan")
    return s
"""


def test_custom_metric_and_its_errors_name_the_function(tmp_path: Path) -> None:
    (tmp_path / "my_metrics.py").write_text(CUSTOM)
    cfg = TaskConfig(type="custom", metric="my_metrics:iou", higher_is_better=True)
    task = tasks.make_task(cfg, base_dir=tmp_path)
    assert "my_metrics" not in sys.path and str(tmp_path) not in sys.path
    assert task.metric_directions() == {"iou": True}
    out, y = torch.eye(3), torch.tensor([0, 1, 1])
    x = torch.zeros(3, 2)
    result = run(task, [({"teacher": out, "student": out}, y, x)])
    assert result["student"].metrics == {"iou": pytest.approx(2 / 3)}
    for name, message in [
        (
            "wrong_shape",
            r"task.metric my_metrics:wrong_shape returned shape \(3, 3\) for a batch of 3 samples",
        ),
        ("with_nan", "task.metric my_metrics:with_nan returned 1 NaN or infinite scores"),
    ]:
        bad = tasks.make_task(
            TaskConfig(type="custom", metric=f"my_metrics:{name}"), base_dir=tmp_path
        )
        with pytest.raises(ModelOutputError, match=message) as e:
            run(bad, [({"teacher": out, "student": out}, y, x)])
        assert e.value.exit_code == 3
    with pytest.raises(ConfigError, match="task.metric: cannot import 'nowhere'"):
        tasks.make_task(TaskConfig(type="custom", metric="nowhere:f"), base_dir=tmp_path)


def test_score_runs_a_task_over_a_dataset_of_dict_batches() -> None:
    class Encoder(torch.nn.Module):
        def __init__(self, scale: float) -> None:
            super().__init__()
            self.emb = torch.nn.Embedding(20, 4)
            self.scale = scale

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict:
            return {"last_hidden_state": self.emb(input_ids) * self.scale}

    torch.manual_seed(0)
    teacher = Encoder(1.0)
    student = Encoder(2.0)
    student.load_state_dict(teacher.state_dict())
    ids = torch.randint(0, 20, (9, 5))
    data = Dataset(
        name="t",
        field="data.holdout",
        _tensors=({"input_ids": ids, "attention_mask": torch.ones(9, 5)}, None),
    )
    seen: list[int] = []
    result = score(
        {"teacher": teacher, "student": student},
        data,
        batch_size=4,
        task=tasks.Embedding(),
        on_batch=lambda x, y: seen.append(len(x["input_ids"])),
    )
    assert seen == [4, 4, 1]
    assert result["student"].metrics["cosine"] == pytest.approx(1.0)  # a scale leaves cosine at 1
    assert math.isnan(result["student"].accuracy) and result["student"].task == "embedding"


def test_paired_statistics_pick_the_test_by_the_scores() -> None:
    t = np.array([1.0, 0, 1, 1])
    assert is_binary(t, t) and not is_binary(t, t * 0.5)
    same = paired_score_statistics(
        t * 0.3, t * 0.3, metric="mae", higher_is_better=False, resamples=500
    )
    assert (
        same.change == 0 and same.p_value == 1.0 and same.change_ci_low == same.change_ci_high == 0
    )
    g = np.random.default_rng(0)
    teacher = g.normal(1.0, 0.1, 400)
    worse = teacher + 0.05 + g.normal(0, 0.01, 400)  # errors grew by 0.05
    stats = paired_score_statistics(
        teacher, worse, metric="mae", higher_is_better=False, resamples=2000, seed=1
    )
    assert stats.change == pytest.approx(0.05, abs=0.005) and stats.p_value < 1e-10
    assert stats.change_ci_low < stats.change < stats.change_ci_high
    again = paired_score_statistics(
        teacher, worse, metric="mae", higher_is_better=False, resamples=2000, seed=1
    )
    assert again == stats
    cos = paired_score_statistics(
        np.ones(50), np.full(50, 0.97), metric="cosine", higher_is_better=True, resamples=300
    )
    assert cos.change == pytest.approx(0.03) and cos.relative_change == pytest.approx(0.03)
    mcnemar = paired_statistics(t.astype(bool), np.array([True, False, False, True]), resamples=200)
    assert mcnemar.teacher_only == 1
