"""Packing at scale: the ``.ccz`` packer beside torch.save, zstd-3, zstd-19 and xz -9.

    python benchmarks/packing.py                  # 1M, 10M, 50M, 110M parameters
    python benchmarks/packing.py --sizes 1 10     # millions of parameters
    python benchmarks/packing.py --sizes 1 10 50 110 --slow-peers-max 10   # 330 s: no zstd-19/xz above 10M
    python benchmarks/packing.py --from-json a.json b.json            # one table from runs
    python benchmarks/packing.py --smoke          # 0.1M, every column once (the test suite)

Each (student, size) runs in a fresh subprocess. The student is a stack of 1024x1024
Linear layers with Gaussian weights (std 1/sqrt(1024), like a trained layer's scale),
made layer by layer so the fp32 model never exists whole, then compressed by the real
passes: ``int8`` (quantize, int8-dynamic: torch.ao's int8 Linear, the default scheme),
``pruned+int8`` (global magnitude pruning to 90% zeros, then int8) and
``pruned+cluster`` (90% pruned, then 4-bit k-means). Measured in that process, in order:

* pack + reload of the ``.ccz`` (CPU seconds, ``time.process_time``, and wall), after a
  warm-up pack of a small model (imports and first-call set-up are paid once per
  process); and the peak RSS (``VmHWM``, reset after the warm-up through
  ``/proc/self/clear_refs``) minus the RSS then: the peak while packing and reloading
  (the peak is reset again once the model is built, so the build's own temporaries, e.g.
  k-means, are reported apart): the model, the packer and the reloaded copy;
* of the same tensors (the ones the packer stores, as raw bytes): a zstd-3 round trip
  (compress + decompress) and zstd-19 (bytes, compress CPU); ``torch.save`` +
  ``torch.load`` of the student's ``state_dict`` (bytes, CPU) and ``xz -9`` (lzma preset
  9) of those ``torch.save`` bytes;
* the payload against the order-0 entropy bound of the streams it stores (raw float
  streams at their size), and bits per nonzero weight beside the bound's.

int8-dynamic layers keep their weights in fbgemm's packed form. The quantize pass keeps
the plain int8 tensors it built them from, so packing reads those (no ``linear_unpack``);
reloading packs them again for fbgemm (``linear_prepack``), torch's work, not the
packer's: the ``torch.ao`` column measures what of it is left on the same model (a read
back, which unpacks only for a module the pass did not build, and the prepack), so the
packer's own share can be read off. The ``sha256`` column is the format's integrity work
inside pack + reload, timed on the file's bytes: the payload's and the whole file's
digests as it is written, the payload's again when it is read back.

``--context`` also measures what context modelling of positions would save beyond order
0, on the demo MLP and CNN (trained on digits, 90% magnitude-pruned): the mask's
order-0 entropy against its entropy given the column, the row, and the left and upper
neighbours, with the side information each needs.

Every row runs three times, each in a fresh process, and keeps the run with the median
pack + reload / zstd-3 ratio (``--repeat``); every run's ratio is in the JSON
(``runs``). Prints a table with the targets beside it; writes
``benchmarks/results/packing.json``. Timings are not asserted anywhere (a shared runner
is noisy): ratios measured side by side.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import lzma
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
WIDTH = 1024
VARIANTS = ("int8", "pruned+int8", "pruned+cluster")
SIZES_M = (1, 10, 50, 110)
SLOW_PEERS_MAX_M = 1000  # zstd-19 and xz -9 up to this size (millions of parameters)
REPEAT = 3  # fresh-process runs per row, the median kept


def _rss_kib() -> int:
    """Peak RSS of this process (KiB), since the last :func:`_reset_peak`: ``VmHWM``.

    Not ``ru_maxrss``: ``clear_refs`` does not reset it, and Linux carries a parent's
    high-water mark into a child started by ``fork``/``exec`` (run from
    ``benchmarks/run.py``, every worker reported the parent's peak).
    """
    try:
        status = Path("/proc/self/status").read_text()
        return int(next(ln for ln in status.splitlines() if ln.startswith("VmHWM:")).split()[1])
    except (OSError, StopIteration, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # not Linux


def _trim() -> None:
    """glibc keeps freed heap for reuse; return it to the OS (Linux, glibc only)."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _reset_peak() -> int:
    """Reset the peak to the current RSS (Linux: ``/proc/self/clear_refs``); returns it (KiB).

    Without the reset, ``ru_maxrss`` still holds the imports' transient peak and a model
    smaller than that would not show at all.
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
        status = Path("/proc/self/status").read_text()
        return int(next(ln for ln in status.splitlines() if ln.startswith("VmRSS:")).split()[1])
    except (OSError, StopIteration, ValueError):
        return _rss_kib()


def _cpu() -> float:
    return time.process_time()


# ---------------------------------------------------------------- the worker


def build(variant: str, params: int) -> Any:
    """The student, made layer by layer (one fp32 layer exists at a time)."""
    import torch
    from torch import nn

    from ci_compress.passes import cluster, prune, quantize
    from ci_compress.passes.base import PassContext

    ctx = PassContext(seed=0, index=0)
    torch.manual_seed(0)
    layers = max(1, round(params / (WIDTH * WIDTH)))
    rows = WIDTH if params >= WIDTH * WIDTH else max(1, params // WIDTH)
    model = nn.Sequential()
    for i in range(layers):
        lin = nn.Linear(WIDTH, rows)
        with torch.no_grad():
            nn.init.normal_(lin.weight, std=WIDTH**-0.5)
        one = nn.Sequential(lin)
        if variant.startswith("pruned"):
            prune.apply(one, prune.PruneConfig(type="prune", amount=0.9), ctx)
        if variant.endswith("int8"):
            quantize.apply(one, quantize.QuantizeConfig(type="quantize"), ctx)
        else:
            cluster.apply(one, cluster.ClusterConfig(type="cluster", bits=4), ctx)
        model.add_module(str(2 * i), one[0])
        if i < layers - 1:
            model.add_module(str(2 * i + 1), nn.ReLU())
    return model.eval()


def _nonzero_weights(tensors: dict[str, Any]) -> int:
    nz = 0
    for name, t in tensors.items():
        if name.endswith(("weight_int8", "indices")):
            nz += int((t != 0).sum())
    return nz


def worker(variant: str, params: int, slow_peers: bool) -> dict[str, Any]:
    import torch
    import zstandard

    from ci_compress.layers.int8 import dynamic_linear_tensors, int8_dynamic_linear
    from ci_compress.packing.file import describe, load_packed, pack

    torch.set_num_threads(1)
    # warm-up: imports and first-call set-up (constriction, numpy's lazy modules, the
    # passes) are paid once per process, not per parameter; the baseline comes after
    warm = build(variant, WIDTH * WIDTH // 16)
    with tempfile.TemporaryDirectory() as tmp:
        pack(warm, Path(tmp) / "w.ccz")
        load_packed(Path(tmp) / "w.ccz")
    del warm
    _trim()
    base_kib = _reset_peak()
    model = build(variant, params)
    tensors: dict[str, torch.Tensor] = {}
    describe(model, tensors)
    n_params = sum(
        (m.in_dim * m.out_dim if hasattr(m, "in_dim") else m.in_features * m.out_features)
        for m in model
        if not isinstance(m, torch.nn.ReLU)
    )
    built_kib = _rss_kib()  # the build's peak (k-means temporaries, one fp32 layer)
    _trim()  # hand the build's freed heap back, so it is not counted as the model's
    model_kib = _reset_peak()  # what the built model holds; the peak starts again here
    out: dict[str, Any] = {"variant": variant, "params": n_params, "layers": (len(model) + 1) // 2}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s.ccz"
        c0, w0 = _cpu(), time.perf_counter()
        info = pack(model, path, level=19)
        c1, w1 = _cpu(), time.perf_counter()
        back, _ = load_packed(path)
        c2, w2 = _cpu(), time.perf_counter()
        peak_kib = _rss_kib()
        x = torch.randn(4, WIDTH)
        with torch.inference_mode():
            same = bool(torch.equal(model(x), back(x)))
        del back
        # the format's own integrity work inside pack + reload: sha256 of the payload and
        # of the whole file as it is written, of the payload again when it is read back
        blob = path.read_bytes()
        h0 = _cpu()
        for _ in range(3):
            hashlib.sha256(blob).digest()
        out["sha256_cpu"] = _cpu() - h0
        del blob
    out.update(
        pack_cpu=c1 - c0,
        reload_cpu=c2 - c1,
        pack_wall=w1 - w0,
        reload_wall=w2 - w1,
        file_bytes=info.file_bytes,
        payload_bytes=info.payload_bytes,
        manifest_bytes=info.manifest_bytes,
        bound_bytes=info.entropy_bound_bytes,
        zstd_level=info.zstd_level,
        outputs_equal=same,
        rss_base_mib=base_kib / 1024,
        rss_build_peak_mib=(built_kib - base_kib) / 1024,
        rss_model_mib=(model_kib - base_kib) / 1024,
        rss_peak_mib=(peak_kib - base_kib) / 1024,
        fp32_mib=4 * n_params / 2**20,
        nonzero_weights=_nonzero_weights(tensors),
    )
    # torch.ao's own share for int8-dynamic layers: unpack (as packing does) + prepack
    if variant.endswith("int8"):
        layers = [m for m in model if hasattr(m, "_packed_params")]
        c0 = _cpu()
        plain = [dynamic_linear_tensors(m) for m in layers]
        c1 = _cpu()
        for t in plain:
            int8_dynamic_linear(t["weight_int8"], t["weight_scale"], t.get("bias"))
        out["torch_ao_cpu"] = (c1 - c0) + (_cpu() - c1)
        del plain
    raw = b"".join(
        t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() for t in tensors.values()
    )
    out["raw_bytes"] = len(raw)
    c0 = _cpu()
    z3 = zstandard.ZstdCompressor(level=3).compress(raw)
    zstandard.ZstdDecompressor().decompress(z3)
    out.update(zstd3_rt_cpu=_cpu() - c0, zstd3_bytes=len(z3))
    del z3
    buf = io.BytesIO()
    c0 = _cpu()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    torch.load(buf, weights_only=False)
    out.update(torch_save_rt_cpu=_cpu() - c0, torch_save_bytes=buf.getbuffer().nbytes)
    if slow_peers:
        c0 = _cpu()
        out["zstd19_bytes"] = len(zstandard.ZstdCompressor(level=19).compress(raw))
        out["zstd19_cpu"] = _cpu() - c0
        del raw
        c0 = _cpu()
        out["xz9_torch_save_bytes"] = len(lzma.compress(buf.getvalue(), preset=9))
        out["xz9_cpu"] = _cpu() - c0
    return out


# ---------------------------------------------------------------- beyond order 0


def _h(p: Any) -> Any:
    import numpy as np

    p = np.clip(p, 1e-12, 1 - 1e-12)
    return -(p * np.log2(p) + (1 - p) * np.log2(1 - p))


def context_gain(masks: dict[str, Any]) -> dict[str, Any]:
    """Bits of each pruned weight matrix's keep-mask under order 0 and under contexts."""
    import math

    import numpy as np
    import zstandard

    rows: dict[str, Any] = {}
    for name, m in masks.items():
        m = np.asarray(m, dtype=bool).reshape(m.shape[0], -1)
        n = m.size
        p = m.mean()
        order0 = n * float(_h(p))
        # column / row context: the kept fraction of each column (row) as side information
        side_col = m.shape[1] * math.log2(m.shape[0] + 1)
        side_row = m.shape[0] * math.log2(m.shape[1] + 1)
        col = float((m.shape[0] * _h(m.mean(0))).sum()) + side_col
        row = float((m.shape[1] * _h(m.mean(1))).sum()) + side_row
        # left and upper neighbours: an adaptive order-2 model costs ~its conditional entropy
        left = np.zeros_like(m)
        left[:, 1:] = m[:, :-1]
        up = np.zeros_like(m)
        up[1:] = m[:-1]
        ctx = left.astype(int) * 2 + up.astype(int)
        neigh = 0.0
        for c in range(4):
            sel = ctx == c
            if sel.any():
                neigh += sel.sum() * float(_h(m[sel].mean()))
        packed = np.packbits(m).tobytes()
        rows[name] = {
            "elements": n,
            "kept": float(p),
            "order0_bits": order0,
            "column_context_bits": col,
            "row_context_bits": row,
            "neighbour_context_bits": neigh,
            "zstd19_mask_bits": 8 * len(zstandard.ZstdCompressor(level=19).compress(packed)),
            "xz9_mask_bits": 8 * len(lzma.compress(packed, preset=9)),
        }
    total = {k: sum(r[k] for r in rows.values()) for k in next(iter(rows.values())) if k != "kept"}
    return {"layers": rows, "total": total}


def context_worker() -> dict[str, Any]:
    import torch

    from ci_compress.demo.train import train_teacher
    from ci_compress.passes import prune
    from ci_compress.passes.base import PassContext

    out = {}
    for kind in ("mlp", "cnn"):
        model = train_teacher(kind)
        prune.apply(
            model, prune.PruneConfig(type="prune", amount=0.9), PassContext(seed=0, index=0)
        )
        masks = {
            n: (m.weight.detach() != 0).reshape(m.weight.shape[0], -1).numpy()
            for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear | torch.nn.Conv2d)
        }
        out[kind] = context_gain(masks)
    return out


# ---------------------------------------------------------------- driver


def _run(args: list[str]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        dest = Path(tmp) / "out.json"
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        proc = subprocess.run(
            [sys.executable, __file__, *args, "--out", str(dest)],
            capture_output=True,
            text=True,
            env=env,
            timeout=7200,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"packing worker {args} failed:\n{proc.stderr[-3000:]}")
        result: dict[str, Any] = json.loads(dest.read_text())
        return result


def run(
    sizes_m: list[float],
    *,
    context: bool = False,
    slow_peers_max: float = SLOW_PEERS_MAX_M,
    repeat: int = REPEAT,
    partial: Path | None = None,
) -> dict[str, Any]:
    """Measure every size and student, ``repeat`` times each (:func:`_median_run`);
    ``partial`` gets the rows so far after each one."""
    rows: list[dict[str, Any]] = []
    res: dict[str, Any] = {"rows": rows}
    if context:
        res["context"] = _run(["--context-worker"])
    for size in sizes_m:
        for variant in VARIANTS:
            args = ["--worker", variant, str(int(size * 1e6))]
            slow = ["--slow-peers"] if size <= slow_peers_max else []
            # one fresh process per run; a shared machine's load moves a single run's
            # milliseconds by 30% (10M int8: 4.4x quiet, 5.5x beside a test run)
            runs = [_run(args + slow)] + [_run(args) for _ in range(repeat - 1)]
            rows.append(_median_run(runs))
            print(_row(rows[-1]), file=sys.stderr, flush=True)
            if partial is not None:
                partial.write_text(json.dumps(res, indent=2) + "\n")
    res["targets"] = targets(rows)
    return res


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run whose pack + reload / zstd-3 ratio is the median (a whole row, so its
    figures stay consistent); every run's ratio and peak RSS ratio beside it. The slow
    peers (zstd-19, xz -9: bytes, and CPU for reference) run once, in the first run."""
    chosen = dict(sorted(runs, key=_ratio)[(len(runs) - 1) // 2])
    chosen |= {k: v for k, v in runs[0].items() if k.startswith(("zstd19_", "xz9_"))}
    chosen["runs"] = {
        "ratio": [round(_ratio(r), 3) for r in runs],
        "rss_ratio": [round(r["rss_peak_mib"] / r["fp32_mib"], 3) for r in runs],
    }
    return chosen


def targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []

    def add(name: str, value: float, limit: float, fmt: str = "{:.2f}") -> None:
        out.append(
            {"target": name, "value": value, "limit": limit, "met": value <= limit, "fmt": fmt}
        )

    big = [r for r in rows if r["params"] >= 5e6] or rows
    for label, some in (("", rows), (", 10M and up", big)):
        worst = max(some, key=lambda r: _ratio(r))
        where = f"(worst: {worst['variant']}, {worst['params'] / 1e6:.0f}M)"
        add(f"pack + reload CPU / zstd-3 round trip <= 5{label} {where}", _ratio(worst), 5)
        worst = max(some, key=lambda r: _ratio(r, torch_ao=False))
        where = f"(worst: {worst['variant']}, {worst['params'] / 1e6:.0f}M)"
        add(
            f"  the same less torch.ao's unpack/prepack <= 5{label} {where}",
            _ratio(worst, torch_ao=False),
            5,
        )
        worst = max(some, key=lambda r: _ratio(r, torch_ao=False, sha=False))
        where = f"(worst: {worst['variant']}, {worst['params'] / 1e6:.0f}M)"
        add(
            f"  the same less torch.ao and the file's three sha256 passes <= 5{label} {where}",
            _ratio(worst, torch_ao=False, sha=False),
            5,
        )
    for variant in VARIANTS:  # from 10M up: below, fixed costs (milliseconds) still show
        mine = sorted(
            (r for r in rows if r["variant"] == variant and r["params"] >= 5e6),
            key=lambda r: r["params"],
        )
        if len(mine) >= 2:
            per = [(r["pack_cpu"] + r["reload_cpu"]) / r["params"] for r in mine]
            # the peer beside it: zstd-3's own round trip per byte at both sizes (the
            # machine's caches and page faults grow with the size for any coder)
            peer = [r["zstd3_rt_cpu"] / r["raw_bytes"] for r in mine]
            add(
                f"linear: CPU per parameter, {mine[-1]['params'] / 1e6:.0f}M / {mine[0]['params'] / 1e6:.0f}M, {variant} <= 1.25"
                f" (zstd-3 itself: {peer[-1] / peer[0]:.2f})",
                per[-1] / per[0],
                1.25,
            )
    for label, some in (("", rows), (", 10M and up", big)):
        worst = max(some, key=lambda r: r["rss_peak_mib"] / r["fp32_mib"])
        where = f"(worst: {worst['variant']}, {worst['params'] / 1e6:.0f}M)"
        add(
            f"peak RSS - imports <= 2x the fp32 model{label} {where}",
            worst["rss_peak_mib"] / worst["fp32_mib"],
            2,
        )
    worst = max(rows, key=lambda r: r["payload_bytes"] / max(1, r["bound_bytes"]))
    add(
        "payload / order-0 entropy bound of its streams <= 1.05",
        worst["payload_bytes"] / worst["bound_bytes"],
        1.05,
        "{:.4f}",
    )
    xz = [r for r in rows if "xz9_torch_save_bytes" in r]
    if xz:
        worst = max(xz, key=lambda r: r["file_bytes"] / r["xz9_torch_save_bytes"])
        add(
            ".ccz file / xz -9 of torch.save <= 1",
            worst["file_bytes"] / worst["xz9_torch_save_bytes"],
            1,
            "{:.3f}",
        )
    add(
        "reloaded model computes the same outputs (0 = all)",
        float(sum(not r["outputs_equal"] for r in rows)),
        0,
        "{:.0f}",
    )
    return out


def _ratio(r: dict[str, Any], *, torch_ao: bool = True, sha: bool = True) -> float:
    cpu = r["pack_cpu"] + r["reload_cpu"] - (0 if torch_ao else r.get("torch_ao_cpu", 0.0))
    cpu -= 0 if sha else r.get("sha256_cpu", 0.0)
    return float(cpu / r["zstd3_rt_cpu"])


def _row(r: dict[str, Any]) -> str:
    m = r["params"] / 1e6
    bits = 8 * r["payload_bytes"] / max(1, r["nonzero_weights"])
    bound_bits = 8 * r["bound_bytes"] / max(1, r["nonzero_weights"])
    xz = r.get("xz9_torch_save_bytes")
    z19 = r.get("zstd19_bytes")
    return (
        f"{r['variant']:15s} {m:6.1f}M  {r['pack_cpu']:6.2f} {r['reload_cpu']:6.2f} "
        f"{r.get('torch_ao_cpu', 0.0):6.2f} {r.get('sha256_cpu', 0.0):6.3f} "
        f"{r['zstd3_rt_cpu']:6.3f} {_ratio(r):6.1f}x "
        f"{r['torch_save_rt_cpu']:6.2f}  {(r['pack_cpu'] + r['reload_cpu']) / m:5.3f}  "
        f"{r['rss_peak_mib'] / r['fp32_mib']:4.2f}  "
        f"{r['file_bytes']:>11,} {r['bound_bytes']:>11,} {r['payload_bytes'] / r['bound_bytes'] - 1:+6.2%} "
        f"{bits:5.2f}/{bound_bits:5.2f}  {r['zstd3_bytes']:>11,} "
        + (f"{z19:>11,}" if z19 else f"{'-':>11}")
        + f" {r['torch_save_bytes']:>11,} "
        + (f"{xz:>11,}" if xz else f"{'-':>11}")
    )


HEAD = (
    "student          params   pack reload torch.ao sha256  zstd3  ratio  tsave  cpu/M  rss  "
    "      .ccz       bound  vs bnd bits/nz(bnd)       zstd-3     zstd-19  torch.save  xz9(tsave)\n"
    "                          cpu s  cpu s   cpu s  x3 s    rt s  /zstd3  rt s     s   /fp32 "
    "     bytes       bytes                            bytes       bytes       bytes       bytes"
)


def table(res: dict[str, Any]) -> str:
    lines = [HEAD] + [_row(r) for r in res["rows"]]
    if "context" in res:
        lines.append("")
        lines.append(
            "beyond order 0: keep-mask bits of the demo models pruned to 90% (trained on digits)"
        )
        lines.append(
            "  model  order 0   column ctx  row ctx  left+up ctx  zstd-19  xz -9   (bits, side information included)"
        )
        for kind, c in res["context"].items():
            t = c["total"]
            lines.append(
                f"  {kind:5s} {t['order0_bits']:8.0f} {t['column_context_bits']:10.0f} {t['row_context_bits']:8.0f} "
                f"{t['neighbour_context_bits']:11.0f} {t['zstd19_mask_bits']:8.0f} {t['xz9_mask_bits']:6.0f}"
            )
    lines.append("")
    lines.append("targets")
    for t in res["targets"]:
        lines.append(
            f"  [{'met' if t['met'] else 'MISSED'}] {t['target']}: {t['fmt'].format(t['value'])}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--sizes", nargs="+", type=float, default=list(SIZES_M), help="millions of parameters"
    )
    ap.add_argument("--smoke", action="store_true", help="0.1M parameters, every column once")
    ap.add_argument(
        "--context", action="store_true", help="also measure context modelling (trains the demo)"
    )
    ap.add_argument(
        "--slow-peers-max",
        type=float,
        default=SLOW_PEERS_MAX_M,
        help="zstd-19 and xz -9 up to this many millions of parameters (CPU minutes above)",
    )
    ap.add_argument(
        "--repeat",
        type=int,
        default=REPEAT,
        help=f"fresh-process runs per row, the median kept (default {REPEAT})",
    )
    ap.add_argument(
        "--from-json",
        type=Path,
        nargs="+",
        help="print the table of earlier runs (their rows together) instead of measuring",
    )
    ap.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "packing.json")
    ap.add_argument("--worker", nargs=2, metavar=("VARIANT", "PARAMS"), help=argparse.SUPPRESS)
    ap.add_argument("--slow-peers", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--context-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        result = worker(args.worker[0], int(args.worker[1]), args.slow_peers)
        args.out.write_text(json.dumps(result))
        return 0
    if args.context_worker:
        args.out.write_text(json.dumps(context_worker()))
        return 0
    if args.from_json:
        runs = [json.loads(p.read_text()) for p in args.from_json]
        res = {"rows": sorted((r for x in runs for r in x["rows"]), key=lambda r: r["params"])}
        res["rows"].sort(key=lambda r: (r["params"], VARIANTS.index(r["variant"])))
        res |= {k: v for x in runs for k, v in x.items() if k == "context"}
        res["targets"] = targets(res["rows"])
        res["runs"] = [{k: v for k, v in x.items() if k in ("machine", "seconds")} for x in runs]
        print(table(res))
        if args.json:
            args.json.write_text(json.dumps(res, indent=2) + "\n")
        return 0
    t0 = time.perf_counter()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    res = run(
        [0.1] if args.smoke else args.sizes,
        context=args.context,
        slow_peers_max=args.slow_peers_max,
        repeat=1 if args.smoke else args.repeat,
        partial=args.json.with_suffix(".partial.json"),
    )
    res["seconds"] = time.perf_counter() - t0
    res["machine"] = {
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "python": sys.version.split()[0],
    }
    print(table(res))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(res, indent=2) + "\n")
    args.json.with_suffix(".partial.json").unlink(missing_ok=True)  # kept only if a run stops
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
