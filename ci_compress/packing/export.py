"""Deployable exports of the shipped student: TorchScript, ONNX and ``torch.export``
programs (``.pt2``), next to the .ccz.

The exports are made from the model rebuilt from the packed file (what ships), and
checked: each is loaded back and run on the holdout, and its top-1 agreement with the
PyTorch student is reported (``student.onnx_agreement``). A model that a format cannot
express (torch.ao's dynamic int8 Linear has no ONNX export) is reported as skipped with
the exporter's reason; it does not fail the gate.

ONNX needs the optional extra ``export`` (``pip install 'ci-compress[export]'``:
onnx, onnxruntime, onnxscript); asking for it without the extra is a config error. The
legacy TorchScript-based ONNX exporter (``dynamo=False``) is used: it handles the eager
modules ci-compress builds without tracing through torch.export.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ci_compress.errors import ConfigError
from ci_compress.layers.batches import Inputs, call_model, named_tensors
from ci_compress.layers.inference import inference
from ci_compress.layers.outputs import OutputSpec, select_output
from ci_compress.packing.program import export_program, read_archive

if TYPE_CHECKING:
    import torch
    from torch import nn

FORMATS = ("torchscript", "onnx", "pt2")
SUFFIX = {"torchscript": ".ts.pt", "onnx": ".onnx", "pt2": ".pt2"}
ONNX_MODULES = ("onnx", "onnxruntime", "onnxscript")


def check_available(formats: Sequence[str]) -> None:
    """Fail early (exit 2) when an export is asked for without its optional extra."""
    if "onnx" in formats:
        missing = []
        for name in ONNX_MODULES:
            try:
                importlib.import_module(name)
            except ImportError:
                missing.append(name)
        if missing:
            raise ConfigError(
                f"onnx export needs {', '.join(missing)}, which is not installed",
                path="ship.export",
                hint="pip install 'ci-compress[export]', or remove onnx from ship.export",
            )


def export_all(
    model: nn.Module,
    formats: Sequence[str],
    out_dir: Path,
    stem: str,
    example: Inputs,
    batches: Callable[[], Iterable[tuple[Any, Any]]],
    *,
    output: OutputSpec = None,
) -> dict[str, dict[str, Any]]:
    """Write each requested export and check it against ``model`` on ``batches``.

    ``example`` is one batch of inputs (any structure) for tracing; both the student and
    its export are compared on the output ``output`` selects (``model.output``).
    """
    out: dict[str, dict[str, Any]] = {}
    for fmt in formats:
        path = out_dir / f"{stem}{SUFFIX[fmt]}"
        path.unlink(missing_ok=True)
        try:
            run = (
                _onnx(model, example, path, output)
                if fmt == "onnx"
                else {"torchscript": _torchscript, "pt2": _pt2}[fmt](model, example, path)
            )
            agree, total, max_diff = _agreement(model, run, batches, output)
        except Exception as e:  # the exporters (and their programs) raise many unrelated types
            path.unlink(missing_ok=True)
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            out[fmt] = {"status": "skipped", "reason": f"{type(e).__name__}: {reason}"}
            continue
        out[fmt] = {
            "status": "ok",
            "file": str(path),
            "file_bytes": path.stat().st_size,
            "agreement": agree / total if total else 0.0,
            "samples": total,
            "max_abs_diff": max_diff,
        }
    return out


def _torchscript(model: nn.Module, example: Inputs, path: Path) -> Callable[..., Any]:
    import torch

    structured = not isinstance(example, torch.Tensor)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if isinstance(example, Mapping):
            traced = torch.jit.trace(  # type: ignore[no-untyped-call]
                model, example_kwarg_inputs=dict(example), check_trace=False, strict=False
            )
        elif structured:
            traced = torch.jit.trace(  # type: ignore[no-untyped-call]
                model, tuple(example), check_trace=False, strict=False
            )
        else:
            traced = torch.jit.trace(model, example, check_trace=False)  # type: ignore[no-untyped-call]
        torch.jit.save(traced, str(path))
        loaded = torch.jit.load(str(path))  # type: ignore[no-untyped-call]
    loaded.eval()
    return loaded  # type: ignore[no-any-return]


def _pt2(model: nn.Module, example: Inputs, path: Path) -> Callable[..., Any]:
    """A ``torch.export`` program (the successor of TorchScript), saved with
    ``torch.export.save`` and read back the way ``model.path`` reads one
    (:func:`~ci_compress.packing.program.read_archive`: checked, nothing unpickled): what
    a server loads, and what the next gate accepts as a source."""
    import torch

    program = export_program(model, example)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.export.save(program, str(path))
    return read_archive(path)


SINGLE_INPUT = "input"  # the name of a model's one input tensor in an exported graph


def input_names(example: Inputs) -> list[str]:
    """The names of a model's input tensors in an exported graph, in a fixed order: one
    tensor is ``input``, positional ones ``input_0``, ``input_1``, ..., keyword ones
    their own names, sorted (:func:`~ci_compress.layers.batches.named_tensors`)."""
    named = named_tensors(example)
    if isinstance(example, Mapping):
        return [name for name, _ in named]
    if len(named) == 1 and named[0][0] == "":
        return [SINGLE_INPUT]
    return [f"input_{name}" for name, _ in named]


def positional(model: nn.Module, example: Inputs, output: OutputSpec = None) -> nn.Module:
    """``model`` as exporters want it: input tensors as positional arguments in
    :func:`input_names` order (one tensor, a tuple or keyword tensors alike) and one
    output tensor, the one ``model.output`` selects."""
    from torch import nn

    structure = (
        "mapping"
        if isinstance(example, Mapping)
        else "single"
        if len(named_tensors(example)) == 1 and not isinstance(example, tuple | list)
        else "sequence"
    )
    names = [name for name, _ in named_tensors(example)]

    class Positional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
            if structure == "mapping":
                out = self.model(**dict(zip(names, tensors, strict=True)))
            elif structure == "sequence":
                out = self.model(*tensors)
            else:
                out = self.model(tensors[0])
            return select_output(out, output, role="student")

    return Positional().eval()


def refuse_torch_ao(model: nn.Module, target: str) -> None:
    """torch.ao's int8 modules have no ONNX (or OpenVINO) operator: say so, by name."""
    quantized = sorted(
        {
            type(m).__qualname__
            for m in model.modules()
            if type(m).__module__.startswith("torch.ao.nn.quantized")
        }
    )
    if quantized:
        raise NotImplementedError(
            f"torch.ao int8 modules ({', '.join(quantized)}) have no {target} operator "
            "(quantized::linear_dynamic); export a student without the quantize pass, or use torchscript"
        )


def write_onnx(model: nn.Module, example: Inputs, path: Path, *, output: OutputSpec = None) -> None:
    """The one ONNX export: the legacy TorchScript-based exporter (``dynamo=False``), one
    input per tensor of ``example`` (:func:`input_names`) with a free batch dimension,
    one output ``output``; checked with ``onnx.checker``. Raises what the exporter
    raises (the callers turn it into a skipped export or a config error)."""
    import onnx
    import torch

    refuse_torch_ao(model, "ONNX")
    names = input_names(example)
    tensors = tuple(t for _, t in named_tensors(example))
    # the legacy exporter prints the whole graph on failure; keep stdout for the report
    with warnings.catch_warnings(), _quiet_stdout():
        warnings.simplefilter("ignore")
        if holds_graph(model):
            # a student rebuilt from its shipped graph: tracing cannot run its symbolic
            # batch size, the torch.export-based exporter takes the program itself (its
            # logger names every optional library it does not find: not the gate's news)
            logging.getLogger("torch.onnx").setLevel(logging.ERROR)
            torch.onnx.export(
                export_program(positional(model, example, output), tensors),
                tensors,
                str(path),
                dynamo=True,
                input_names=names,
                output_names=["output"],
                verbose=False,
                external_data=False,  # one file: it is renamed and sized as shipped
            )
        else:
            torch.onnx.export(
                positional(model, example, output),
                tensors,
                str(path),
                dynamo=False,
                input_names=names,
                output_names=["output"],
                dynamic_axes={**{n: {0: "batch"} for n in names}, "output": {0: "batch"}},
            )
    onnx.checker.check_model(str(path))


def holds_graph(model: nn.Module) -> bool:
    """Whether ``model`` runs a ``torch.fx`` graph (a student rebuilt from the graph its
    ``.ccz`` ships, or a ``.pt2`` teacher): TorchScript tracing cannot run one whose batch
    size is symbolic, so converters are given a ``torch.export`` program instead."""
    import torch

    return any(isinstance(m, torch.fx.GraphModule) for m in model.modules())


def _onnx(
    model: nn.Module, example: Inputs, path: Path, output: OutputSpec = None
) -> Callable[..., Any]:
    import onnxruntime
    import torch

    write_onnx(model, example, path, output=output)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    wanted = {i.name for i in session.get_inputs()}

    def run(*args: torch.Tensor, **kwargs: torch.Tensor) -> torch.Tensor:
        inputs: Inputs = kwargs if kwargs else args[0] if len(args) == 1 else args
        feed = {
            n: t.numpy()
            for n, (_, t) in zip(input_names(inputs), named_tensors(inputs), strict=True)
            if n in wanted
        }
        (y,) = session.run(["output"], feed)
        return torch.from_numpy(y)

    return run


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """Silence stdout at the file-descriptor level (C++ code prints there too)."""
    import os
    import sys

    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            with contextlib.redirect_stdout(io.StringIO()):
                yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _agreement(
    model: nn.Module,
    run: Callable[..., Any],
    batches: Callable[[], Iterable[tuple[Any, Any]]],
    output: OutputSpec = None,
) -> tuple[int, int, float]:
    """Top-1 agreement (argmax over the last dimension) and the largest difference."""
    agree = total = 0
    max_diff = 0.0
    with inference([model]):
        for x, _ in batches():
            a = select_output(call_model(model, x), output, role="student")
            b = select_output(call_model(run, x), output, role="exported")
            agree += int((a.argmax(-1) == b.argmax(-1)).sum())
            total += a.argmax(-1).numel()
            max_diff = max(max_diff, float((a.float() - b.float()).abs().max()))
    return agree, total, max_diff
