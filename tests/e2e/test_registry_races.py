"""Concurrent gates on the default branch against one real MLflow server.

Issue 16: two gates started together both compared themselves with champion v1 and both
promoted; the alias ended on the worse one, below the version it displaced by more than
``max_accuracy_drop_vs_champion``. Promotion is now compare-and-swap under a server-side
lock (``record.promotion_lock``): whatever the interleaving, the final champion passed
its rule against the very version it replaced, and every gate that did not promote says
why (``gate-failed``, exit 1, or ``champion-moved``, exit 7).
"""

from __future__ import annotations

import json
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from ci_compress.record import LOCK_SUFFIX
from tests.helpers.cli import run_cli, run_console
from tests.helpers.configs import base_config, write_config
from tests.helpers.servers import MlflowServer

pytestmark = pytest.mark.slow

GH_MAIN = {
    "GITHUB_ACTIONS": "true",
    "GITHUB_REF": "refs/heads/main",
    "GITHUB_REF_NAME": "main",
    "GITHUB_SHA": "a" * 40,
    "GITHUB_REPOSITORY": "acme/models",
    "GITHUB_RUN_ID": "101",
}
MAX_DROP_VS_CHAMPION = 1.0  # points
# Candidates of different quality: more pruning, lower accuracy.
PRUNE_AMOUNTS = (0.2, 0.4, 0.6, 0.8)


def _config(uri: str, name: str, passes: list[dict[str, Any]]) -> dict[str, Any]:
    return base_config(
        passes=passes,
        thresholds={
            "max_accuracy_drop": 10.0,
            "max_accuracy_drop_vs_champion": MAX_DROP_VS_CHAMPION,
        },
        mlflow={
            "enabled": True,
            "tracking_uri": uri,
            "experiment": name,
            "registered_model": name,
        },
        runtime={"latency_repeats": 1, "latency_warmup": 0, "threads": 1},
    )


def test_concurrent_default_branch_gates_promote_only_over_what_they_compared(
    workdir: Path, mlflow_server: MlflowServer
) -> None:
    client = MlflowClient(tracking_uri=mlflow_server.uri, registry_uri=mlflow_server.uri)
    name = f"race-{uuid.uuid4().hex[:8]}"
    # v1, the champion every gate below looks up: quantized only, the best of them.
    seed = run_cli(
        "run",
        "--config",
        str(write_config(workdir, _config(mlflow_server.uri, name, [{"type": "quantize"}]))),
        cwd=workdir,
        env=GH_MAIN,
    )
    assert seed.returncode == 0, seed.stderr
    assert client.get_model_version_by_alias(name, "champion").version == "1"

    results: dict[float, Any] = {}

    def gate(amount: float, label: str = "") -> None:
        folder = workdir / f"gate-{amount}{label}"
        folder.mkdir()
        shutil.copy(workdir / "digits_mlp.safetensors", folder)
        cfg = _config(
            mlflow_server.uri, name, [{"type": "prune", "amount": amount}, {"type": "quantize"}]
        )
        path = write_config(folder, cfg)
        results[amount] = run_console("run", "--config", str(path), cwd=folder, env=GH_MAIN)

    def together(amounts: list[float], label: str = "") -> None:
        started = time.monotonic()
        threads = [threading.Thread(target=gate, args=(a, label)) for a in amounts]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        print(f"{len(amounts)} concurrent gates took {time.monotonic() - started:.1f} s")

    together(list(PRUNE_AMOUNTS))

    reports = {}
    for amount, proc in results.items():
        assert proc.returncode in (0, 1, 7), (amount, proc.returncode, proc.stderr)
        reports[amount] = json.loads(
            (workdir / f"gate-{amount}" / "report" / "report.json").read_text()
        )
        r = reports[amount]["registry"]
        print(
            amount,
            proc.returncode,
            r["version"],
            r["promotion"],
            r["compared_with"],
            r["alias_was"],
            reports[amount]["deltas"].get("delta.accuracy_drop_vs_champion_points"),
        )
    # Every gate compared itself with v1, and at least two were good enough to promote:
    # without compare-and-swap both would have moved the alias.
    assert all(r["registry"]["compared_with"] == "1" for r in reports.values())
    passing = [a for a, r in reports.items() if r["gate"]["passed"]]
    assert len(passing) >= 2, {a: r["gate"]["passed"] for a, r in reports.items()}

    versions = {v.version: v for v in client.search_model_versions(f"name='{name}'")}
    accuracy = {
        number: client.get_run(v.run_id).data.metrics["student.accuracy"]
        for number, v in versions.items()
    }
    final = client.get_model_version_by_alias(name, "champion")
    replaced = final.tags["ci_compress.alias_was"]
    # The final champion passed its rule against the very version it replaced.
    assert final.tags["ci_compress.baseline_version"] == replaced == "1"
    assert (accuracy[replaced] - accuracy[final.version]) * 100 <= MAX_DROP_VS_CHAMPION + 1e-9
    # Exactly one of the racing gates promoted; each of the others says why it did not.
    promoted = [a for a, r in reports.items() if r["registry"]["promoted"]]
    assert len(promoted) == 1
    assert reports[promoted[0]]["registry"]["version"] == final.version
    for amount, r in reports.items():
        reg, proc = r["registry"], results[amount]
        tags = versions[reg["version"]].tags
        if amount in promoted:
            assert proc.returncode == 0 and tags["ci_compress.promotion"] == "default-branch"
            assert f"@champion moved to version {reg['version']} (from version 1)" in proc.stdout
        elif not r["gate"]["passed"]:
            assert (
                proc.returncode == 1
                and reg["promotion"] == tags["ci_compress.promotion"] == "gate-failed"
            )
            assert "@champion not moved (gate-failed)" in proc.stdout
        else:
            assert proc.returncode == 7, proc.stderr
            assert reg["promotion"] == tags["ci_compress.promotion"] == "champion-moved"
            assert reg["alias_was"] == final.version and tags["candidate"] == "true"
            assert "not moved (champion-moved): another gate moved it to version" in proc.stdout
    # Only one version was ever promoted over v1, and no lock is left behind.
    promoted_tags = [
        v for v in versions.values() if v.tags.get("ci_compress.promotion") == "default-branch"
    ]
    assert sorted(v.version for v in promoted_tags) == sorted(["1", final.version])
    assert client.search_registered_models(filter_string=f"name LIKE '%{LOCK_SUFFIX}'") == []

    # Round 2: the refused gates are re-run, as exit 7 tells, again all at once. They
    # compare with the new champion now; whatever they do, the invariant holds over the
    # whole history: each promotion passed its rule against the version it replaced.
    refused = [a for a, r in reports.items() if r["registry"]["promotion"] == "champion-moved"]
    results.clear()
    together(refused, "-rerun")
    for amount in refused:
        proc = results[amount]
        assert proc.returncode in (0, 1, 7), (amount, proc.returncode, proc.stderr)
        again = json.loads(
            (workdir / f"gate-{amount}-rerun" / "report" / "report.json").read_text()
        )["registry"]
        assert again["compared_with"] == final.version, again
        print("rerun", amount, proc.returncode, again["version"], again["promotion"])
    versions = {v.version: v for v in client.search_model_versions(f"name='{name}'")}
    accuracy = {
        number: client.get_run(v.run_id).data.metrics["student.accuracy"]
        for number, v in versions.items()
    }
    chain = []
    for v in versions.values():
        if v.tags.get("ci_compress.promotion") != "default-branch":
            continue
        was = v.tags["ci_compress.alias_was"]  # "none" for v1, the first champion
        assert v.tags["ci_compress.baseline_version"] == was, (v.version, v.tags)
        if was != "none":
            assert (accuracy[was] - accuracy[v.version]) * 100 <= MAX_DROP_VS_CHAMPION + 1e-9
        chain.append((was, v.version))
    # The promotions form one chain from v1 to the alias holder: none was skipped over.
    holder = client.get_model_version_by_alias(name, "champion").version
    links = dict(chain)
    walk, at = ["none"], "none"
    while at in links:
        at = links[at]
        walk.append(at)
    assert walk[-1] == holder and len(walk) == len(chain) + 1, (chain, holder)
    assert client.search_registered_models(filter_string=f"name LIKE '%{LOCK_SUFFIX}'") == []
