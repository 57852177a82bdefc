"""Beyond order 0 for the values: cluster indices coded with their left neighbour as context.

    python benchmarks/context_coding.py [--ccz FILE ...] [--json PATH] [--smoke]

The packer codes a value stream of at most 16 symbols either at order 0 (``ans``) or
with the left neighbour in the row as context (``ans1``, chosen by estimate,
:func:`ci_compress.packing.encoding.plan_context`). This measures both side by side, in
one process, one thread, CPU seconds (``time.process_time``):

* **fields**: 2048x2048 tensors of 3-bit cluster indices (``tests.helpers.clustered``):
  a random walk along each row (neighbouring weights alike, as a first layer's receptive
  fields) at 10% kept and dense, and the Gaussian 4-bit case whose values are independent
  (``ans1`` must not be chosen there). Columns: stored bytes and encode / decode CPU with
  the packer's choice, and the same with order 0 forced.
* ``--ccz FILE``: a shipped student (``benchmarks/deep_compression.py --keep DIR``
  writes the chosen ones): for each cluster-index tensor, the values stream's coder and
  bytes against order 0 forced, and the conditional entropy (bits, tables not counted)
  of its kept values given nothing (order 0), the left neighbour in the row (0 when
  pruned), the previous kept value in the row, the row, the column, and the same column
  one row up.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _coded(t: Any, order0: bool) -> dict[str, Any]:
    """Encode and decode ``t`` (order 0 forced or the packer's choice): bytes and CPU."""
    import torch

    from ci_compress.packing import encoding
    from tests.helpers.clustered import chunk_reader

    gain = encoding.CONTEXT_GAIN
    encoding.CONTEXT_GAIN = 0.0 if order0 else gain
    try:
        c0 = time.process_time()
        enc = encoding.encode(t)
        c1 = time.process_time()
        back = encoding.decode("t", enc.entry, chunk_reader(enc))
        c2 = time.process_time()
    finally:
        encoding.CONTEXT_GAIN = gain
    assert torch.equal(back, t)
    return {
        "coder": enc.entry["values"].get("coder"),
        "bytes": enc.stored_bytes,
        "values_bytes": encoding.symbol_stream_bytes(enc.entry["values"]),
        "encode_cpu": c1 - c0,
        "decode_cpu": c2 - c1,
    }


def fields(side: int = 2048) -> list[dict[str, Any]]:
    from tests.helpers.clustered import clustered_sparse, smooth_clustered

    cases = {
        "random walk, 10% kept": smooth_clustered((side, side), 0.1),
        "random walk, dense": smooth_clustered((side, side), None),
        "independent (Gaussian), 10% kept": clustered_sparse("gaussian", (side, side)),
    }
    rows = []
    for label, t in cases.items():
        _coded(t, False)  # warm-up
        rows.append({"case": label, "chosen": _coded(t, False), "order0": _coded(t, True)})
    return rows


def _h(x: Any) -> float:
    import numpy as np

    _, c = np.unique(x, return_counts=True)
    return float(-(c * np.log2(c / c.sum())).sum())


def _given(x: Any, ctx: Any) -> float:
    import numpy as np

    return sum(_h(x[ctx == c]) for c in np.unique(ctx))


def conditional_bits(idx: Any) -> dict[str, float]:
    """Bits of the kept values of a 2-D index tensor given each candidate context."""
    import numpy as np

    m = idx != 0
    vals = idx[m]
    rows, cols = np.nonzero(m)
    left = np.zeros_like(idx)
    left[:, 1:] = idx[:, :-1]
    up = np.zeros_like(idx)
    up[1:] = idx[:-1]
    prev = np.zeros_like(vals)
    same_row = np.r_[False, rows[1:] == rows[:-1]]
    prev[1:] = vals[:-1]
    prev[~same_row] = 0
    return {
        "order0": _h(vals),
        "left": _given(vals, left[m]),
        "previous kept": _given(vals, prev),
        "row": _given(vals, rows),
        "column": _given(vals, cols),
        "up": _given(vals, up[m]),
    }


def ccz(path: Path) -> list[dict[str, Any]]:
    from ci_compress.packing.file import load_packed

    model, _ = load_packed(path)
    out = []
    for name, buf in model.named_buffers():
        if not name.endswith("indices"):
            continue
        t = buf.detach()
        idx = t.reshape(t.shape[0], -1).numpy().astype(int)
        out.append(
            {
                "file": path.name,
                "tensor": name,
                "shape": list(t.shape),
                "chosen": _coded(t, False),
                "order0": _coded(t, True),
                "bits": conditional_bits(idx),
            }
        )
    return out


def table(res: dict[str, Any]) -> str:
    lines = [
        "cluster-index values: the packer's choice against order 0 forced (CPU s, 1 thread)",
        "  case                               coder     bytes   enc s   dec s |  order-0 bytes   enc s   dec s",
    ]
    for r in res["fields"]:
        c, o = r["chosen"], r["order0"]
        lines.append(
            f"  {r['case']:<34} {c['coder']:<5} {c['bytes']:>9,} {c['encode_cpu']:7.3f} "
            f"{c['decode_cpu']:7.3f} | {o['bytes']:>14,} {o['encode_cpu']:7.3f} {o['decode_cpu']:7.3f}"
        )
    for r in res.get("ccz", []):
        c, o, b = r["chosen"], r["order0"], r["bits"]
        lines += [
            "",
            f"{r['file']} {r['tensor']} {r['shape']}: values stream {c['coder']} "
            f"{c['values_bytes']:,} bytes, order 0 {o['values_bytes']:,}",
            "  bits of the kept values given: " + ", ".join(f"{k} {v:,.0f}" for k, v in b.items()),
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ccz", type=Path, nargs="*", default=[], help="shipped students to look at")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--smoke", action="store_true", help="256x256 fields")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    side = 256 if args.smoke else 2048
    res: dict[str, Any] = {"fields": fields(side), "ccz": [r for p in args.ccz for r in ccz(p)]}
    print(table(res))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
