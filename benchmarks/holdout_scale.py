"""Holdouts larger than memory: peak memory of the whole gate, and evaluation throughput
against a bare inference loop.

    python benchmarks/holdout_scale.py [--smoke] [--json PATH]

``benchmarks/run.py`` runs :func:`memory` as its memory section; this command runs both.

* **memory**: the whole gate (``pipeline.run``: demo MLP, prune 0.5 + int8-dynamic,
  ``mlflow.enabled: false``) in a fresh process per holdout; the peak RSS of that
  process (``VmHWM``, everything: interpreter, torch, the data; see :func:`peak_rss_kib`). Holdouts: the
  digits test split repeated to 8,100 samples (1x, 2.1 MB of arrays) and to 405,000
  (50x, 107 MB: large against the ~270 MB process), stored as a folder of ``.npy``
  shards (read a batch at a time, :mod:`ci_compress.loading.npy`), and the 50x holdout
  as one ``.npz`` (read whole) as the contrast, which must show the data in the peak.
* **throughput**: in one process, interleaved, CPU time (``time.process_time``), median
  of 3 rounds (more for small holdouts: 100,000 samples' worth: 92 at 1,080, 9 at 10,260), one thread,
  batch 256, shards of 5,400 samples; 1k, 10k and 100k samples. Both sides get the same
  loaded models (demo MLP teacher and its shipped prune 0.5 + int8-dynamic student) and
  the same folder; both read every sample and score the student alike (checked once
  before timing).

  - *gate*: what ``pipeline.run`` does with a folder holdout, from opening it to the
    figures: :func:`ci_compress.loading.data.load_dataset` (every shard's ``.npy``
    headers parsed and checked, with the task's target check, as
    ``stages.load_inputs`` calls it), then :func:`ci_compress.evaluation.measure.evaluate`
    (what ``measure`` runs before its latency timing): both models put in eval mode
    under ``inference()``, every batch read and checked (scalar and finite inputs,
    labels), both models' forward, each output's shape/finite checks, the
    classification task's per-sample scores and final counts (accuracy, macro-F1,
    agreement, per class) and the holdout's sha256 over every byte. Not timed: the
    config (the ``DataSource``), built once per gate when the config is read.
  - *bare*: a plain inference loop: ``np.load`` of each shard's two arrays
    (header parse and one read), ``torch.from_numpy``, then per batch of 256 both models'
    forward under ``torch.inference_mode()``, ``argmax`` and the top-1 hits of each.
    No checks, no digest, no per-sample scores.
  - *floor*: the bare loop that also feeds every batch's bytes to ``hashlib.sha256``
    (one hash for the inputs, one for the labels): what any gate pays that records which
    data it evaluated. On a model this small the hash is a visible share of the loop
    (the models' int8 kernels run at a few hundred MB/s of input on this CPU, sha256
    at 1.1-1.3 GB/s); *gate / floor* is ci-compress's own work beside it.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DIGITS_TEST = 540


def write_folder(folder: Path, repeat: int, shard_repeats: int = 25) -> tuple[int, int]:
    """The digits test split ``repeat`` times (each copy slightly shifted) as shard
    folders of ``shard_repeats`` copies; returns (samples, bytes of arrays)."""
    import numpy as np

    sys.path.insert(0, str(REPO))
    from benchmarks.holdout import digits_stream

    folder.mkdir(parents=True, exist_ok=True)
    samples = 0
    # digits_stream yields one copy (540 samples) at a time; a shard gathers shard_repeats
    # of them (before, each copy was its own shard: 185 shards of 540 samples at 100k)
    copies = digits_stream(repeat, batch_size=DIGITS_TEST)
    for k in range(0, repeat, shard_repeats):
        xs, ys = zip(*itertools.islice(copies, min(shard_repeats, repeat - k)), strict=True)
        shard = folder / f"part-{k // shard_repeats:05d}"
        shard.mkdir(exist_ok=True)
        np.save(shard / "x.npy", np.concatenate(xs))
        np.save(shard / "y.npy", np.concatenate(ys))
        samples += sum(len(y) for y in ys)
    return samples, sum(p.stat().st_size for p in folder.rglob("*.npy"))


def peak_rss_kib() -> int:
    """This process's peak resident set (``VmHWM``), in KiB.

    Not ``ru_maxrss``: Linux carries a process's high-water mark across ``fork`` and
    ``exec`` into the child's ``ru_maxrss``, so a worker started by a parent holding
    hundreds of MB reports the parent's peak, whatever it does itself (the first
    version of this benchmark measured 679 MB for every holdout that way). ``VmHWM``
    belongs to the process's own address space, which ``exec`` replaces.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # not Linux


def _gate_worker(config: Path, out: Path) -> None:
    """Runs in its own process: the whole gate; the process's peak RSS."""
    from ci_compress import pipeline
    from ci_compress.config import load_config

    report = pipeline.run(load_config(config))
    out.write_text(
        json.dumps(
            {
                "samples": report.holdout.samples,
                "holdout_sha256": report.holdout.sha256,
                "peak_rss_kib": peak_rss_kib(),
                "passed": report.passed,
            }
        )
    )


def memory(work: Path, demo: Path, *, base: int, repeat: int) -> dict[str, Any]:
    """Peak RSS of fresh gate processes: 1x and ``repeat``x folder holdouts, and the
    ``repeat``x holdout as one .npz. ``base``: digits copies in the 1x holdout."""
    import numpy as np
    import yaml

    config = yaml.safe_load((demo / "compress.yaml").read_text())
    config["mlflow"] = {"enabled": False}
    small, large = work / f"holdout-x{base}", work / f"holdout-x{base * repeat}"
    n_small, bytes_small = write_folder(small, base)
    n_large, bytes_large = write_folder(large, base * repeat)
    npz = work / f"holdout-x{base * repeat}.npz"
    xs = [np.load(p) for p in sorted(large.glob("*/x.npy"))]
    ys = [np.load(p) for p in sorted(large.glob("*/y.npy"))]
    np.savez(npz, x=np.concatenate(xs), y=np.concatenate(ys))
    del xs, ys
    cases = {
        f"folder of .npy shards, {n_small:,} samples ({bytes_small / 1e6:.1f} MB)": small,
        f"folder of .npy shards, {n_large:,} samples ({bytes_large / 1e6:.0f} MB)": large,
        f"one .npz read whole, {n_large:,} samples ({npz.stat().st_size / 1e6:.0f} MB)": npz,
    }
    rows: dict[str, Any] = {}
    for i, (label, path) in enumerate(cases.items()):
        cfg = demo / f"memory-{i}.yaml"
        cfg.write_text(
            yaml.safe_dump(
                {**config, "data": {"holdout": {"path": str(path)}}, "report": {"dir": f"mem-{i}"}}
            )
        )
        out = work / f"memory-{i}.json"
        subprocess.run(
            [sys.executable, __file__, "_gate", str(cfg), str(out)], cwd=demo, check=True
        )
        rows[label] = json.loads(out.read_text())
    one, fifty, whole = rows.values()
    return {
        "repeat": repeat,
        "data_bytes": [bytes_small, bytes_large],
        "rows": rows,
        "peak_rss_ratio": fifty["peak_rss_kib"] / one["peak_rss_kib"],
        "npz_peak_rss_ratio": whole["peak_rss_kib"] / one["peak_rss_kib"],
        "same_digest": fifty["holdout_sha256"] == whole["holdout_sha256"],
    }


def throughput(work: Path, demo: Path, sizes: list[int], rounds: int = 3) -> list[dict[str, Any]]:
    """Seconds to score a folder holdout through the gate's pass against a bare loop."""
    import numpy as np
    import torch

    sys.path.insert(0, str(REPO))
    from ci_compress.config import DataSource, load_config
    from ci_compress.evaluation.measure import evaluate
    from ci_compress.evaluation.tasks import Classification
    from ci_compress.loading.data import load_dataset
    from ci_compress.stages import apply_passes, load_inputs, ship

    torch.set_num_threads(1)
    loaded = load_config(demo / "compress.yaml")
    inputs = load_inputs(loaded, work)
    student, history = apply_passes(loaded, inputs, loaded.config.passes)
    shipped, _ = ship(loaded, student, [r.to_dict() for r in history], work / "student.ccz")
    models = {"teacher": inputs.teacher.module.eval(), "student": shipped.eval()}
    rows = []
    for n in sizes:
        folder = work / f"throughput-{n}"
        # the nearest whole number of digits/test copies: 1,080, 10,260 and 99,900 samples
        samples, _ = write_folder(folder, max(1, round(n / DIGITS_TEST)), shard_repeats=10)

        source = DataSource(path=str(folder))  # the config: built once per gate

        def gate(source: DataSource = source) -> tuple[int, int]:
            # what the gate runs (stages.load_inputs, then measure.measure without the
            # latency timing): open the folder with the task's target check, then one
            # pass that checks every batch, runs both models, scores them and hashes
            # the holdout
            task = Classification()
            ds = load_dataset(source, work, field="data.holdout", check_target=task.check_target)
            result, _ = evaluate(models, ds, batch_size=256, task=task)
            return result["teacher"].samples, result["student"].correct

        def bare(folder: Path = folder, digest: bool = False) -> tuple[int, int]:
            # the same files (each read whole), the same models, top-1 hits; with digest
            # (the floor), also one sha256 over the inputs' and one over the labels' bytes
            seen, correct = 0, dict.fromkeys(models, 0)
            hx, hy = hashlib.sha256(), hashlib.sha256()
            with torch.inference_mode():
                for shard in sorted(p for p in folder.iterdir() if p.is_dir()):
                    x = torch.from_numpy(np.load(shard / "x.npy"))
                    y = torch.from_numpy(np.load(shard / "y.npy"))
                    for i in range(0, len(y), 256):
                        xb, yb = x[i : i + 256], y[i : i + 256]
                        for role, m in models.items():
                            correct[role] += int((m(xb).argmax(1) == yb).sum())
                        if digest:
                            hx.update(xb.numpy())
                            hy.update(yb.numpy())
                        seen += len(xb)
            return seen, correct["student"]

        def hashed() -> tuple[int, int]:
            return bare(digest=True)

        times: dict[str, list[float]] = {"gate": [], "bare": [], "bare_sha256": []}
        # warm-up, and all three read every sample and score the student alike
        assert gate() == bare() == hashed() and bare()[0] == samples
        for _ in range(max(rounds, 100_000 // samples)):  # small holdouts: more rounds
            for name, fn in (("gate", gate), ("bare", bare), ("bare_sha256", hashed)):
                t0 = time.process_time()
                fn()
                times[name].append(time.process_time() - t0)
        g, b = statistics.median(times["gate"]), statistics.median(times["bare"])
        h = statistics.median(times["bare_sha256"])
        rows.append(
            {
                "samples": samples,
                "gate_s": g,
                "bare_s": b,
                "bare_sha256_s": h,
                "ratio": g / b,
                "floor_ratio": h / b,
                "over_floor": g / h,
            }
        )
    return rows


def table(mem: dict[str, Any], thr: list[dict[str, Any]] | None) -> str:
    lines = [
        "peak RSS of the whole gate, a fresh process per holdout (demo MLP, prune 0.5 + int8)",
        "  holdout                                               peak RSS   samples",
        "  ----------------------------------------------------  ---------  --------",
    ]
    for label, r in mem["rows"].items():
        lines.append(f"  {label:<52}  {r['peak_rss_kib'] / 1024:7.1f}MB  {r['samples']:>8,}")
    lines.append(
        f"  peak RSS, {mem['repeat']}x / 1x folder: {mem['peak_rss_ratio']:.3f}; "
        f"{mem['repeat']}x .npz / 1x folder: {mem['npz_peak_rss_ratio']:.3f}; "
        f"same digest folder/.npz: {mem['same_digest']}"
    )
    if thr:
        lines += [
            "",
            "evaluation CPU time, folder holdout, both models, batch 256, 1 thread (median of 3 to 92 rounds)",
            "  floor: the bare loop that also takes the sha256 of every byte it reads",
            "  samples    gate s    bare s   floor s   gate/bare  floor/bare  gate/floor",
            "  -------  --------  --------  --------  ---------  ----------  ----------",
        ]
        for r in thr:
            lines.append(
                f"  {r['samples']:>7,}  {r['gate_s']:8.3f}  {r['bare_s']:8.3f}  "
                f"{r['bare_sha256_s']:8.3f}  {r['ratio']:8.2f}x  {r['floor_ratio']:9.2f}x  "
                f"{r['over_floor']:9.2f}x"
            )
    lines += ["", "targets"]
    for t in targets(mem, thr):
        lines.append(f"  [{'met' if t['met'] else 'MISSED'}] {t['target']}: {t['measured']}")
    return "\n".join(lines)


def targets(mem: dict[str, Any], thr: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    out = [
        {
            "target": f"peak RSS, {mem['repeat']}x / 1x folder holdout <= 1.2",
            "measured": f"{mem['peak_rss_ratio']:.3f}",
            "met": mem["peak_rss_ratio"] <= 1.2,
        },
        {
            "target": "the folder's digest equals the .npz's",
            "measured": str(mem["same_digest"]),
            "met": bool(mem["same_digest"]),
        },
    ]
    for r in thr or []:
        out.append(
            {
                "target": f"evaluation CPU, gate / bare loop <= 1.1 at {r['samples']:,} samples",
                "measured": f"{r['ratio']:.2f} (the floor: {r['floor_ratio']:.2f}; gate / floor: {r['over_floor']:.2f})",
                "met": r["ratio"] <= 1.1,
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_gate":
        _gate_worker(Path(argv[1]), Path(argv[2]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, once")
    ap.add_argument("--json", type=Path, default=REPO / "benchmarks/results/holdout_scale.json")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from ci_compress.demo.train import prepare

    with tempfile.TemporaryDirectory(prefix="ci-compress-holdout-") as tmp:
        work = Path(tmp)
        demo = work / "demo"
        prepare(demo, kind="mlp")
        mem = (
            memory(work, demo, base=1, repeat=2)
            if args.smoke
            else memory(work, demo, base=15, repeat=50)
        )
        thr = throughput(work, demo, [1_000] if args.smoke else [1_000, 10_000, 100_000])
    res = {"smoke": args.smoke, "memory": mem, "throughput": thr, "targets": targets(mem, thr)}
    if not args.smoke:
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    print(table(mem, thr))
    return 0


if __name__ == "__main__":
    sys.exit(main())
