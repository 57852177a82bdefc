"""The holdout is streamed: one full pass of a factory, a digest independent of batching."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ci_compress import pipeline
from ci_compress.config import LoadedConfig, parse_config
from ci_compress.loading.data import Dataset, HoldoutDigest, digits_split
from tests.helpers.configs import base_config

FACTORY = """
import json, pathlib
from ci_compress.loading.data import digits_split

LOG = pathlib.Path(__file__).with_name("factory-log.json")

def holdout(batch_size=100):
    log = json.loads(LOG.read_text()) if LOG.exists() else {"started": 0, "completed": 0, "batches": 0}
    log["started"] += 1
    LOG.write_text(json.dumps(log))
    x, y = digits_split("test")
    for i in range(0, len(y), batch_size):
        log["batches"] += 1
        LOG.write_text(json.dumps(log))
        yield x[i : i + batch_size], y[i : i + batch_size]
    log["completed"] += 1
    LOG.write_text(json.dumps(log))
"""


def test_digest_does_not_depend_on_the_batch_size() -> None:
    x, y = (torch.from_numpy(a) for a in digits_split("test"))
    digests = set()
    for bs in (1, 7, 256, 540):
        d = HoldoutDigest()
        for i in range(0, len(y), bs):
            d.update(x[i : i + bs], y[i : i + bs])
        digests.add(d.hexdigest())
    assert len(digests) == 1
    other = HoldoutDigest()
    x2 = x.clone()
    x2[17, 3] += 1e-3
    other.update(x2, y)
    assert other.hexdigest() not in digests
    ds = Dataset(name="t", field="data.holdout", _tensors=(x, y))
    assert ds.digest() in digests


def test_a_factory_holdout_is_read_through_once(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (workdir / "stream_holdout.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(workdir))
    sys.modules.pop("stream_holdout", None)
    raw = base_config(data={"holdout": {"factory": "stream_holdout:holdout"}, "batch_size": 64})
    loaded = LoadedConfig(config=parse_config(raw), source=None, base_dir=workdir, sha256="")
    report = pipeline.run(loaded)
    log = json.loads((workdir / "factory-log.json").read_text())
    # The load-time emptiness check and the latency batch read one batch each and stop;
    # metrics and the holdout digest share the single full pass.
    assert log["completed"] == 1, log
    assert log["batches"] == 6 + 2, log
    assert report.holdout["samples"] == 540
    x, y = digits_split("test")
    full = HoldoutDigest()
    full.update(torch.from_numpy(x), torch.from_numpy(y))
    assert report.holdout["sha256"] == full.hexdigest()


def test_evaluation_calls_on_batch_for_every_batch(workdir: Path) -> None:
    from ci_compress.demo.models import digits_mlp
    from ci_compress.evaluation.metrics import score

    x, y = (torch.from_numpy(a) for a in digits_split("test"))
    ds = Dataset(name="t", field="data.holdout", _tensors=(x, y))
    sizes: list[int] = []
    result = score(
        {"teacher": digits_mlp()}, ds, batch_size=100, on_batch=lambda xb, yb: sizes.append(len(yb))
    )
    assert sizes == [100] * 5 + [40]
    assert result["teacher"].samples == 540
    assert np.asarray(result["teacher"].correct_mask).shape == (540,)
