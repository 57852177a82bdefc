"""``ci-compress tune`` spread over worker processes that share one study on PostgreSQL.

    python benchmarks/tune_workers.py [--trials 24] [--workers 1 2 4] [--smoke]

What N CI runners pointed at one study gain (the GitHub matrix / GitLab ``parallel:``
recipe in docs/tuning.md): a throwaway PostgreSQL server on 127.0.0.1
(``tests/helpers/postgres.py``), the demo MLP's tune study (prune amount in
[0.3, 0.95] and scope, quantize optional, ``max_trials`` trials, seed 0,
``mlflow.enabled: false``), run once per worker count as a fresh study: N
``ci-compress tune`` processes started together, wall time until the last one exits.
Each worker is one process (``runtime.threads: 1``), as a 1-core runner would be.
Printed beside each: the speed-up over one worker, the floor of a perfect split
(``min(N, cores)``: workers beyond the machine's cores share them), the trials each
process ran, and whether the budget held (exactly ``max_trials`` trials, none run twice)
and the best passing file each run found.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def _config(demo: Path, trials: int) -> dict[str, Any]:
    import yaml

    config = yaml.safe_load((demo / "compress.yaml").read_text())
    config.update(
        mlflow={"enabled": False},
        passes=[{"type": "prune", "amount": 0.5}, {"type": "quantize"}],
        thresholds={"max_accuracy_drop": 2.0},
        runtime={**config.get("runtime", {}), "threads": 1, "latency_repeats": 6},
        tune={
            "space": {
                "passes[0].amount": {"low": 0.3, "high": 0.95},
                "passes[0].scope": {"choices": ["global", "layer"]},
            },
            "optional_passes": [1],
            "objective": "size",
            "max_trials": trials,
            "seed": 0,
        },
    )
    return config


def run_study(folder: Path, storage: str, study: str, workers: int) -> dict[str, Any]:
    import optuna
    import yaml

    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "GITHUB_", "CI_"))}
    env["PYTHONPATH"] = str(REPO)
    cmd = [sys.executable, "-m", "ci_compress", "tune", "--config", "compress.yaml"]
    cmd += ["--storage", storage, "--study", study, "--quiet"]
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(cmd, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(workers)
    ]
    for p in procs:
        _, err = p.communicate(timeout=3600)
        if p.returncode != 0:
            raise RuntimeError(f"a tune worker failed ({p.returncode}): {err.decode()[-2000:]}")
    wall = time.perf_counter() - t0
    trials = optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False)
    counted = [t for t in trials if not t.user_attrs.get("over_budget")]
    per_worker = Counter(str(t.user_attrs.get("worker", "?")).split(":")[1] for t in counted)
    text = (folder / "tuned.yaml").read_text()
    tuned = yaml.safe_load(text)
    best = re.search(r"Shipped ([\d,]+) bytes", text)
    return {
        "workers": workers,
        "wall_s": wall,
        "trials": len(counted),
        "distinct_numbers": len({t.number for t in trials}) == len(trials),
        "trials_per_worker": sorted(per_worker.values(), reverse=True),
        "best_passes": tuned["passes"],
        "best_bytes": int(best.group(1).replace(",", "")) if best else None,
    }


def table(res: dict[str, Any]) -> str:
    rows = res["rows"]
    base = rows[0]["wall_s"]
    cores = res["cores"]
    lines = [
        f"tune on one PostgreSQL study: demo MLP, {res['trials']} trials, seed 0, "
        f"{cores} cores, one thread per worker",
        "  workers   wall s   speed-up   perfect split (floor)   best bytes   trials per worker   budget held",
        "  -------  -------  ---------  ----------------------  -----------  ------------------  -----------",
    ]
    for r in rows:
        held = r["trials"] == res["trials"] and r["distinct_numbers"]
        lines.append(
            f"  {r['workers']:>7}  {r['wall_s']:7.1f}  {base / r['wall_s']:8.2f}x  "
            f"{min(r['workers'], cores):21d}x  {r['best_bytes'] or 0:>11,}  "
            f"{r['trials_per_worker']!s:>18}  {held!s:>11}"
        )
    lines.append(
        "  (parallel workers sample from different trial histories, so each run searches "
        "differently: the best file differs run to run, within the same budget)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--smoke", action="store_true", help="4 trials, 1 and 2 workers")
    ap.add_argument("--json", type=Path, default=REPO / "benchmarks/results/tune_workers.json")
    args = ap.parse_args(argv)
    if args.smoke:
        args.trials, args.workers = 4, [1, 2]
    sys.path.insert(0, str(REPO))
    from ci_compress.demo.train import prepare
    from tests.helpers.postgres import pg_bin, postgres_server

    bin_dir = pg_bin()
    if bin_dir is None:
        print("PostgreSQL is not installed (apt-get install postgresql)", file=sys.stderr)
        return 2
    import yaml

    with tempfile.TemporaryDirectory(prefix="ci-compress-tune-bench-") as tmp:
        work = Path(tmp)
        prepare(work / "demo", kind="mlp")
        config = _config(work / "demo", args.trials)
        rows = []
        with postgres_server(bin_dir) as storage:
            for n in args.workers:
                folder = work / f"workers-{n}"
                folder.mkdir()
                shutil.copy(work / "demo" / "digits_mlp.safetensors", folder)
                (folder / "compress.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
                rows.append(run_study(folder, storage, f"workers-{n}", n))
    res = {"trials": args.trials, "cores": os.cpu_count() or 1, "rows": rows}
    if not args.smoke:
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    print(table(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
