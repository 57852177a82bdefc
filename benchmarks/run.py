"""ci-compress benchmarks: one command, one table, one JSON file.

    python benchmarks/run.py            # full run (a few minutes on 2 cores)
    python benchmarks/run.py --smoke    # every benchmark once, tiny sizes (the test suite runs this)

Measured in the same run, side by side, each in fresh subprocesses:

* **gate vs bare script**: wall time of ``ci-compress run`` on the demo (prune 0.5 +
  int8-dynamic, digits holdout) with ``mlflow.enabled: false``, the same with MLflow
  logging to a local sqlite store, and ``benchmarks/bare_script.py`` doing the same
  prune, quantize, save and evaluation with no tool around it; medians over repeats,
  the three interleaved so a busy moment of a shared machine hits all alike. The gate's
  own phases come from its progress lines.
* **cold start**: ``ci-compress --help`` against ``python -c pass``, and which heavy
  modules it imports (``python -X importtime``).
* **latency**: each student (rebuilt from its shipped .ccz) against its fp32 teacher at
  batch 1, 64 and 256, one thread, median of repeats, timed round-robin.
* **memory**: peak RSS (``ru_maxrss``) of fresh gate processes on a folder holdout of
  .npy shards at 1x (8,100 samples) and 50x (405,000 samples, 107 MB: large against the
  process), and the 50x holdout as one .npz read whole as the contrast
  (``benchmarks/holdout_scale.py``, which also measures evaluation throughput).
* **packing**: ``benchmarks/packing.py`` at 1M and 10M parameters (its own targets; the
  full 1M-110M table is ``python benchmarks/packing.py``).

Targets are printed beside the numbers; a missed target does not fail the command
(benchmarks are not timed tests: shared CI runners are noisy).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import holdout_scale  # benchmarks/holdout_scale.py, beside this file
import packing  # benchmarks/packing.py, beside this file

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "mlflow", "numpy", "pydantic", "sklearn", "yaml", "requests")


# ---------------------------------------------------------------- helpers


def _env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("GITHUB_", "GITLAB", "CI_", "JENKINS", "MLFLOW_"))
    }
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _timed(cmd: list[str], cwd: Path) -> tuple[float, subprocess.CompletedProcess[str]]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - t0
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return wall, proc


def _cli() -> list[str]:
    return [sys.executable, "-m", "ci_compress"]


def _write_yaml(path: Path, data: dict[str, Any]) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def cpu_model(default: str = "unknown") -> str:
    """The CPU's model name (``/proc/cpuinfo``), or ``default`` where there is none."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return default


def machine() -> dict[str, Any]:
    cpu = cpu_model()
    from importlib.metadata import version

    torch_version = version("torch")  # without importing it
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "torch": torch_version,
        "platform": platform.platform(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


_STAMP = re.compile(r"^\[\s*([0-9.]+)s\] (.*)$")
_STEP = re.compile(r"^\S+ [\d,]+(/[\d,]+ \(\d+%\))?$")  # "evaluating 540/540 (100%)"


def _phases(stderr: str, wall: float) -> dict[str, float]:
    """Seconds between the gate's progress lines, from its own stderr.

    Stamps count from when the CLI set up its progress output (after the interpreter
    started, the pipeline was imported and the config loaded), so the last phase (after
    the last line until the process ended, as seen from outside) also holds that start.
    """
    marks = []
    for line in stderr.splitlines():
        m = _STAMP.match(line)
        if m and not m.group(2).startswith("warning:") and not _STEP.match(m.group(2)):
            marks.append((float(m.group(1)), m.group(2)))
    out: dict[str, float] = {}
    if not marks:
        return out
    out["tracker, CI detection, import torch"] = marks[0][0]
    for (t0, msg), (t1, _) in itertools.pairwise(marks):
        out[re.sub(r"^pass \d+/\d+: ", "pass: ", msg)] = t1 - t0
    out[f"{marks[-1][1]}, reports, exit + interpreter, config"] = max(0.0, wall - marks[-1][0])
    return out


# ---------------------------------------------------------------- benchmarks


def bench_pipeline(work: Path, repeats: int, warmup: bool) -> dict[str, Any]:
    """Wall time of the gate (with and without MLflow) against the bare script."""
    from ci_compress.demo.train import prepare

    demo = work / "demo"
    cfg_path = prepare(demo, kind="mlp")
    import yaml

    base = yaml.safe_load(cfg_path.read_text())
    no_mlflow = _write_yaml(demo / "gate.yaml", {**base, "mlflow": {"enabled": False}})
    with_mlflow = _write_yaml(
        demo / "gate-mlflow.yaml",
        {
            **base,
            "mlflow": {
                "experiment": "bench",
                "tracking_uri": f"sqlite:///{demo / 'mlflow.db'}",
            },
        },
    )
    runs = {
        "bare": [
            sys.executable,
            str(REPO / "benchmarks" / "bare_script.py"),
            str(demo / "digits_mlp.safetensors"),
            str(work / "bare-out"),
        ],
        "gate": [*_cli(), "run", "--config", str(no_mlflow)],
        "gate_mlflow": [*_cli(), "run", "--config", str(with_mlflow)],
    }
    if warmup:  # file cache, sqlite schema creation: not what we measure
        for cmd in runs.values():
            _timed(cmd, demo)
    walls: dict[str, list[float]] = {k: [] for k in runs}
    phases: list[dict[str, float]] = []
    bare_out: dict[str, Any] = {}
    gate_report: dict[str, Any] = {}
    for _ in range(repeats):
        for name, cmd in runs.items():
            wall, proc = _timed(cmd, demo)
            walls[name].append(wall)
            if name == "bare":
                bare_out = json.loads(proc.stdout.strip().splitlines()[-1])
            if name == "gate":
                phases.append(_phases(proc.stderr, wall))
                gate_report = json.loads((demo / "report" / "report.json").read_text())
    med = {k: statistics.median(v) for k, v in walls.items()}
    phase_names = list(phases[0]) if phases else []
    return {
        "repeats": repeats,
        "wall_s": {k: {"median": med[k], "all": [round(v, 3) for v in walls[k]]} for k in walls},
        "ratio_gate_over_bare": med["gate"] / med["bare"],
        "mlflow_logging_s": med["gate_mlflow"] - med["gate"],
        "gate_phases_s": {
            p: statistics.median(ph.get(p, 0.0) for ph in phases) for p in phase_names
        },
        "same_result": {
            "bare_student_accuracy": bare_out.get("student_accuracy"),
            "gate_student_accuracy": gate_report.get("student", {})
            .get("metrics", {})
            .get("accuracy")
            if gate_report
            else None,
        },
    }


def bench_cold_start(repeats: int) -> dict[str, Any]:
    """`ci-compress --help` against a bare interpreter start, and what it imports."""
    walls: dict[str, list[float]] = {"python -c pass": [], "ci-compress --help": []}
    for _ in range(repeats):
        for name, cmd in (
            ("python -c pass", [sys.executable, "-c", "pass"]),
            ("ci-compress --help", [*_cli(), "--help"]),
        ):
            wall, _ = _timed(cmd, REPO)
            walls[name].append(wall)
    probe = (
        "import sys; from ci_compress.cli import main; main(['--help']); "
        f"print('HEAVY:' + ','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", probe],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    marker = [line for line in proc.stdout.splitlines() if line.startswith("HEAVY:")][-1]
    imported = [m for m in marker.removeprefix("HEAVY:").split(",") if m]
    cumulative = {}
    for line in proc.stderr.splitlines():
        parts = [p.strip() for p in line.removeprefix("import time:").split("|")]
        if len(parts) == 3 and parts[2] in ("click", "ci_compress.cli"):
            cumulative[parts[2]] = int(parts[1]) / 1e6
    med = {k: statistics.median(v) for k, v in walls.items()}
    return {
        "repeats": repeats,
        "wall_s": med,
        "heavy_modules_imported": imported,
        "import_s": cumulative,
    }


def _mlflow_worker(uri: str, artifact: Path, out: Path) -> None:
    """Runs in its own process: where MLflow's time goes (import, store, logging calls)."""
    t0 = time.perf_counter()
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    t1 = time.perf_counter()
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("bench-breakdown")
    exp_id = exp.experiment_id if exp else client.create_experiment("bench-breakdown")
    t2 = time.perf_counter()
    run = client.create_run(exp_id, run_name="breakdown")
    rid = run.info.run_id
    client.log_batch(rid, params=[Param(f"p{i}", str(i)) for i in range(40)], synchronous=True)
    now = int(time.time() * 1000)
    client.log_batch(rid, metrics=[Metric(f"m{i}", float(i), now, 0) for i in range(30)])
    client.log_artifact(rid, str(artifact))
    client.set_terminated(rid, "FINISHED")
    t3 = time.perf_counter()
    out.write_text(
        json.dumps(
            {
                "import mlflow": t1 - t0,
                "open the store (sqlite: schema check)": t2 - t1,
                "run, params, metrics, artifact, end": t3 - t2,
            }
        )
    )


def bench_mlflow_breakdown(work: Path) -> dict[str, float]:
    out = work / "mlflow-breakdown.json"
    uri = f"sqlite:///{work / 'demo' / 'mlflow.db'}"  # the store the gate runs used
    artifact = work / "demo" / "compress.yaml"
    _timed([sys.executable, __file__, "_mlflow", uri, str(artifact), str(out)], work)
    return dict(json.loads(out.read_text()))


def _latency_worker(repeats_small: int, repeats_large: int, out: Path) -> None:
    """Runs in its own process: teachers, students as shipped, latency per batch size."""
    import copy

    import torch

    from ci_compress.evaluation.performance import latency_ms
    from ci_compress.packing.file import load_packed, pack
    from ci_compress.passes.base import PassContext
    from ci_compress.passes.prune import PruneConfig
    from ci_compress.passes.quantize import QuantizeConfig
    from ci_compress.passes.registry import PASSES
    from ci_compress.passes.run import run_pass
    from ci_compress.refs import import_factory

    torch.set_num_threads(1)
    torch.manual_seed(0)
    models = {
        "mlp 64-256-128-10 (demo)": ("ci_compress.demo.models:digits_mlp", {}),
        "mlp 64-1024-512-10": ("ci_compress.demo.models:digits_mlp", {"hidden": (1024, 512)}),
        "cnn 16-32 (demo --model cnn)": ("ci_compress.demo.models:digits_cnn", {}),
    }
    rows = []
    for label, (target, kwargs) in models.items():
        fn = import_factory(target, path="bench")
        teacher = fn(**kwargs).eval()
        student = copy.deepcopy(teacher)
        run_pass(PASSES["prune"], student, PruneConfig(amount=0.5), PassContext(seed=0, index=0))
        run_pass(PASSES["quantize"], student, QuantizeConfig(), PassContext(seed=0, index=1))
        path = out.parent / "latency-student.ccz"
        pack(student, path, factory=target, level=3)
        shipped, _ = load_packed(path, factory=lambda fn=fn, kw=kwargs: fn(**kw))
        for batch in (1, 64, 256):
            x = torch.rand(batch, 64, generator=torch.Generator().manual_seed(batch))
            reps = repeats_small if batch == 1 else repeats_large
            lat = latency_ms(
                {"teacher": teacher, "student": shipped}, x, repeats=reps, warmup=max(2, reps // 10)
            )
            rows.append(
                {
                    "model": label,
                    "batch": batch,
                    "teacher_ms": lat["teacher"],
                    "student_ms": lat["student"],
                    "speedup": lat["teacher"] / lat["student"],
                }
            )
    out.write_text(json.dumps(rows))


def bench_latency(work: Path, smoke: bool) -> list[dict[str, Any]]:
    out = work / "latency.json"
    reps = ("5", "3") if smoke else ("300", "60")
    _timed([sys.executable, __file__, "_latency", *reps, str(out)], REPO)
    return list(json.loads(out.read_text()))


def bench_memory(work: Path, smoke: bool) -> dict[str, Any]:
    """Peak RSS of fresh gate processes on folder holdouts of 1x and 50x (107 MB) and
    on the 50x holdout as one .npz (benchmarks/holdout_scale.py)."""
    if smoke:
        return holdout_scale.memory(work, work / "demo", base=1, repeat=2)
    return holdout_scale.memory(work, work / "demo", base=15, repeat=50)


# ---------------------------------------------------------------- table


def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    p, c, m = res["pipeline"], res["cold_start"], res["memory"]
    mlp256 = next(
        r for r in res["latency"] if r["model"].startswith("mlp 64-256") and r["batch"] == 256
    )
    wide256 = next(
        r for r in res["latency"] if r["model"].startswith("mlp 64-1024") and r["batch"] == 256
    )
    return [
        {
            "target": "gate wall / bare script wall <= 1.3 (MLflow off)",
            "measured": f"{p['ratio_gate_over_bare']:.2f}",
            "met": p["ratio_gate_over_bare"] <= 1.3,
        },
        {
            "target": "MLflow logging (sqlite store) <= 3 s",
            "measured": f"{p['mlflow_logging_s']:.2f} s",
            "met": p["mlflow_logging_s"] <= 3.0,
        },
        {
            "target": "ci-compress --help <= 0.3 s",
            "measured": f"{c['wall_s']['ci-compress --help']:.3f} s",
            "met": c["wall_s"]["ci-compress --help"] <= 0.3,
        },
        {
            "target": "--help imports none of torch, mlflow, numpy, pydantic",
            "measured": ", ".join(c["heavy_modules_imported"]) or "none",
            "met": not set(c["heavy_modules_imported"]) & {"torch", "mlflow", "numpy", "pydantic"},
        },
        {
            "target": "int8 student >= 1.5x faster, demo MLP, batch 256",
            "measured": f"{mlp256['speedup']:.2f}x",
            "met": mlp256["speedup"] >= 1.5,
        },
        {
            "target": "int8 student >= 1.5x faster, 64-1024-512 MLP, batch 256",
            "measured": f"{wide256['speedup']:.2f}x",
            "met": wide256["speedup"] >= 1.5,
        },
        *holdout_scale.targets(m, None),
    ]


def table(res: dict[str, Any]) -> str:
    p, c = res["pipeline"], res["cold_start"]
    mc = res["machine"]
    lines = [
        f"machine: {mc['nproc']} cores, {mc['cpu']}, Python {mc['python']}, torch {mc['torch']}, "
        f"load average at start {mc['load_average_at_start']}",
        "",
        f"gate vs bare script (demo MLP, prune 0.5 + int8-dynamic, digits holdout; median of {p['repeats']})",
        "  run                                     wall (s)",
        "  --------------------------------------  --------",
        f"  bare PyTorch script                     {p['wall_s']['bare']['median']:8.2f}",
        f"  ci-compress run, mlflow.enabled: false  {p['wall_s']['gate']['median']:8.2f}",
        f"  ci-compress run, MLflow (sqlite store)  {p['wall_s']['gate_mlflow']['median']:8.2f}",
        f"  ratio gate / bare                       {p['ratio_gate_over_bare']:8.2f}",
        f"  MLflow logging (difference)             {p['mlflow_logging_s']:8.2f}",
    ]
    for name, secs in p.get("mlflow_breakdown_s", {}).items():
        lines.append(f"    MLflow: {name:<40} {secs:6.2f}")
    lines += [
        "",
        "  gate phases (MLflow off)                                  s",
    ]
    for name, secs in p["gate_phases_s"].items():
        lines.append(f"    {name:<52} {secs:6.2f}")
    lines += [
        "",
        f"cold start (median of {c['repeats']})",
        f"  python -c pass                          {c['wall_s']['python -c pass']:8.3f} s",
        f"  ci-compress --help                      {c['wall_s']['ci-compress --help']:8.3f} s",
        f"  heavy modules imported by --help        {', '.join(c['heavy_modules_imported']) or 'none'}",
        "",
        "latency, student (.ccz as shipped) vs fp32 teacher, 1 thread, median ms",
        "  model                         batch  teacher  student  speed-up",
        "  ----------------------------  -----  -------  -------  --------",
    ]
    for r in res["latency"]:
        lines.append(
            f"  {r['model']:<28}  {r['batch']:>5}  {r['teacher_ms']:7.3f}  {r['student_ms']:7.3f}  {r['speedup']:7.2f}x"
        )
    lines += [
        "",
        *holdout_scale.table(res["memory"], None).split("\n\ntargets")[0].splitlines(),
        "",
        "targets",
    ]
    for t in res["targets"]:
        lines.append(f"  [{'met' if t['met'] else 'MISSED'}] {t['target']}: {t['measured']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_latency":
        _latency_worker(int(argv[1]), int(argv[2]), Path(argv[3]))
        return 0
    if argv and argv[0] == "_mlflow":
        _mlflow_worker(argv[1], Path(argv[2]), Path(argv[3]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="every benchmark once, tiny sizes")
    ap.add_argument("--repeats", type=int, default=None, help="pipeline runs per variant")
    ap.add_argument("--json", type=Path, default=None, help="where to write the results")
    ap.add_argument("--workdir", type=Path, default=None, help="keep the work files here")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(REPO))
    out_json = args.json or (
        REPO / "benchmarks" / ("results-smoke.json" if args.smoke else "results.json")
    )
    with tempfile.TemporaryDirectory(prefix="ci-compress-bench-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        res: dict[str, Any] = {"smoke": args.smoke, "machine": machine()}
        t0 = time.perf_counter()
        res["pipeline"] = bench_pipeline(
            work, args.repeats or (1 if args.smoke else 5), warmup=not args.smoke
        )
        res["pipeline"]["mlflow_breakdown_s"] = bench_mlflow_breakdown(work)
        res["cold_start"] = bench_cold_start(1 if args.smoke else 15)
        res["latency"] = bench_latency(work, args.smoke)
        res["memory"] = bench_memory(work, args.smoke)
        # packing at scale has its own command and targets (1M-110M: benchmarks/packing.py)
        res["packing"] = packing.run([0.1], repeat=1) if args.smoke else packing.run([1, 10])
        res["targets"] = targets(res)
        res["seconds"] = time.perf_counter() - t0
    out_json.write_text(json.dumps(res, indent=2) + "\n")
    print(table(res))
    print("\npacking (the full table, 1M-110M: python benchmarks/packing.py)")
    print(packing.table(res["packing"]))
    print(f"\nwritten: {out_json}  ({res['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
