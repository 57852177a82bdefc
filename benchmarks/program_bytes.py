"""What the graph costs in a shipped file: models of custom classes, packed with their
``torch.export`` program (docs/shipped-file.md, "The program stream").

    python benchmarks/program_bytes.py          # custom MLP, ResNet-18, MiniLM-L6 (~1 CPU min)
    python benchmarks/program_bytes.py --smoke  # the MLP only

For each model (fp32, as it is; int8 students shrink the weights, not the graph): the
file's bytes, the graph's JSON bytes and what it takes in the payload after zstd (the
packer flushes a zstd block before it, so these bytes are its own), its share of the
file, pack and reload seconds (wall, after a warm-up pack), and the largest output
difference between the model and its reload on a batch of another size than the one it
was exported with. Writes ``benchmarks/results/program_bytes.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ci_compress.layers.batches import call_model  # noqa: E402
from ci_compress.layers.outputs import select_output  # noqa: E402
from ci_compress.packing.file import load_packed, pack  # noqa: E402


class MLP(nn.Module):
    """A small custom class: two hidden layers and a residual connection."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(64, 128)
        self.hidden = nn.Linear(128, 128)
        self.out = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.inp(x))
        return self.out(h + torch.relu(self.hidden(h)))


def mlp() -> tuple[nn.Module, Callable[[int], Any]]:
    return MLP(), lambda n: torch.rand(n, 64)


def resnet18() -> tuple[nn.Module, Callable[[int], Any]]:
    from tests.helpers.real_models import resnet18 as build

    return build(), lambda n: torch.rand(n, 3, 32, 32)


def minilm() -> tuple[nn.Module, Callable[[int], Any]]:
    from ci_compress.loading.models import _transformers
    from tests.helpers.real_models import minilm as folder
    from tests.helpers.real_models import tokenized

    path = folder()
    model = _transformers().AutoModel.from_pretrained(str(path))
    tokens = {k: torch.from_numpy(v) for k, v in tokenized(path, 16).items()}
    return model, lambda n: {k: v[:n] for k, v in tokens.items()}


MODELS = {"custom MLP": mlp, "ResNet-18": resnet18, "MiniLM-L6 (HF)": minilm}


def measure(
    name: str, make: Callable[[], tuple[nn.Module, Callable[[int], Any]]]
) -> dict[str, Any]:
    torch.manual_seed(0)
    model, inputs = make()
    model.eval()
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "m.ccz"
        start = time.perf_counter()
        info = pack(model, path, example=inputs(4))
        packed = time.perf_counter() - start
        start = time.perf_counter()
        loaded, _ = load_packed(path)
        reloaded = time.perf_counter() - start
    x = inputs(7)
    with torch.inference_mode():
        a = select_output(call_model(model, x))
        b = select_output(call_model(loaded, x))
    return {
        "model": name,
        "parameters": sum(p.numel() for p in model.parameters()),
        "file_bytes": info.file_bytes,
        "program_json_bytes": info.program_raw_bytes,
        "program_bytes": info.program_bytes,
        "program_share": info.program_bytes / info.file_bytes,
        "pack_s": round(packed, 2),
        "reload_s": round(reloaded, 2),
        "max_abs_diff": float((a - b).abs().max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    pack(MLP(), Path(tempfile.mkdtemp()) / "warm.ccz", example=torch.rand(4, 64))  # warm-up
    names = ["custom MLP"] if args.smoke else list(MODELS)
    rows = [measure(n, MODELS[n]) for n in names]
    print(
        f"{'model':<16} {'params':>10} {'file':>12} {'graph JSON':>11} {'graph zstd':>11} {'share':>7} {'pack s':>7} {'load s':>7} {'max diff':>9}"
    )
    for r in rows:
        print(
            f"{r['model']:<16} {r['parameters']:>10,} {r['file_bytes']:>12,} "
            f"{r['program_json_bytes']:>11,} {r['program_bytes']:>11,} "
            f"{r['program_share']:>7.2%} {r['pack_s']:>7} {r['reload_s']:>7} {r['max_abs_diff']:>9.2g}"
        )
    if not args.smoke:
        out = REPO / "benchmarks" / "results" / "program_bytes.json"
        out.write_text(json.dumps({"torch": torch.__version__, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
