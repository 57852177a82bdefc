"""Serving runtimes: the shipped student converted to what serves it (``ship.runtime``).

``torch`` serves the model rebuilt from the ``.ccz`` (nothing here runs). For the others
the reloaded student is converted to that runtime's own file, next to the ``.ccz``, and
loaded back in that runtime; that loaded artifact is what the gate evaluates and times:

* ``onnxruntime``: ``student.onnx`` (the one ONNX export, :func:`~ci_compress.packing.export.write_onnx`),
  served by an ONNX Runtime ``InferenceSession`` on the CPU provider. ``ship.quantize:
  int8`` is ONNX Runtime's post-training static quantization
  (``onnxruntime.quantization.quantize_static``, QDQ format, int8 weights per channel and
  int8 activations, MinMax ranges from ``data.calibration``).
* ``openvino``: ``student.xml`` + ``student.bin`` from ``openvino.convert_model``, served
  by the compiled model on the CPU plugin. ``ship.quantize: int8`` is NNCF's
  post-training quantization (``nncf.quantize`` with its default settings, and
  ``model_type=TRANSFORMER`` for a model with attention layers) of the converted model; NNCF quantizes the OpenVINO model, not the torch one (its torch
  backend does not run on torch 2.13). ``ship.quantize: int8-weights`` is NNCF's
  data-free weight compression (``nncf.compress_weights``, its default ``INT8_ASYM``:
  every MatMul's and embedding table's weights int8 per output channel with a zero
  point), dequantized to fp32 at run time: a quarter of the bytes at fp32 speed, for a
  CPU whose int8 kernels are not faster (no VNNI). Saved with
  ``compress_to_fp16=False``, so what was measured is what is written.

Each toolchain is the runtime's own: its quantizer knows which of its kernels exist and
fuses layers accordingly, which hand-written QDQ insertion would have to re-learn per
runtime release. The files are written into a temporary folder and moved into place,
so a reader never sees half an artifact. Thread counts are set (``runtime.threads``:
ONNX Runtime's ``intra_op_num_threads``, OpenVINO's ``INFERENCE_NUM_THREADS``), and the
calibration batches are the first ones of ``data.calibration`` in order: same inputs,
same artifact, same decision.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ci_compress.errors import ConfigError
from ci_compress.files import make_dir
from ci_compress.layers.batches import Inputs, named_tensors
from ci_compress.layers.outputs import OutputSpec
from ci_compress.packing.export import (
    SINGLE_INPUT,
    _quiet_stdout,
    holds_graph,
    input_names,
    positional,
    refuse_torch_ao,
    write_onnx,
)
from ci_compress.packing.program import export_program

RUNTIMES = ("torch", "onnxruntime", "openvino")
# runtime -> the modules it needs, without and with ship.quantize (int8, int8-weights)
NEEDS = {
    "onnxruntime": (("onnx", "onnxruntime", "onnxscript"), ()),
    "openvino": (("openvino",), ("nncf",)),
}
# the pyproject extra that installs each runtime
EXTRA = {"onnxruntime": "onnxruntime", "openvino": "openvino"}
# what each runtime loads (the first file is the one a server opens)
SUFFIXES = {"onnxruntime": (".onnx",), "openvino": (".xml", ".bin")}


def check_available(runtime: str, quantize: str) -> None:
    """Fail early (exit 2) when ``ship.runtime`` names a runtime that is not installed."""
    if runtime not in NEEDS:
        return
    plain, int8 = NEEDS[runtime]
    absent = [
        name for name in (*plain, *(int8 if quantize != "none" else ())) if not _importable(name)
    ]
    if absent:
        raise ConfigError(
            f"{runtime} needs {', '.join(absent)}, which is not installed",
            path="ship.runtime",
            hint=f"pip install 'ci-compress[{EXTRA[runtime]}]', or set ship.runtime: torch",
        )


def _importable(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


def artifact_paths(runtime: str, out_dir: Path, stem: str) -> list[Path]:
    """The files ``runtime`` writes for a student named ``stem`` (none for torch)."""
    return [out_dir / f"{stem}{suffix}" for suffix in SUFFIXES.get(runtime, ())]


@dataclass(frozen=True)
class Served:
    """The student as its runtime serves it: the files written, and the model loaded
    from them (an ``nn.Module`` whose forward runs the runtime)."""

    runtime: str
    quantize: str
    files: tuple[Path, ...]
    module: nn.Module

    @property
    def file_bytes(self) -> int:
        """What the runtime loads: the bytes of every file of the artifact."""
        return sum(p.stat().st_size for p in self.files)

    @property
    def sha256(self) -> str:
        """One digest over the artifact's files, in order (a single file: its sha256)."""
        if len(self.files) == 1:
            return _file_sha256(self.files[0])
        h = hashlib.sha256()
        for p in self.files:
            h.update(_file_sha256(p).encode())
        return h.hexdigest()


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def serve(
    model: nn.Module,
    runtime: str,
    out_dir: Path,
    stem: str,
    example: Inputs,
    *,
    quantize: str = "none",
    calibration: Callable[[], Iterable[Inputs]] | None = None,
    calibration_batches: int = 8,
    threads: int = 1,
    output: OutputSpec = None,
) -> Served:
    """Convert ``model`` (the student read back from the ``.ccz``) to ``runtime``'s
    artifact ``out_dir/<stem>.<suffix>``, int8-quantized by that runtime's toolchain when
    ``quantize`` is ``int8`` (on the first ``calibration_batches`` batches of
    ``calibration``), and load it back in that runtime.

    ``example`` is one batch of inputs (one tensor, a tuple, or keyword tensors); the
    batch dimension stays free. A model the runtime's converter cannot take raises
    :class:`~ci_compress.errors.ConfigError` naming ``ship.runtime``.
    """
    if runtime not in NEEDS:
        raise ValueError(f"no artifact for runtime {runtime!r}")
    if quantize == "int8-weights" and runtime != "openvino":
        raise ConfigError(
            f"ship.quantize: int8-weights is OpenVINO's weight compression, not {runtime}'s",
            path="ship.quantize",
            hint="set ship.runtime: openvino, or ship.quantize: int8",
        )
    check_available(runtime, quantize)
    feeds: list[list[np.ndarray]] = []
    if quantize == "int8":
        if calibration is None:
            raise ConfigError(
                "ship.quantize: int8 needs calibration batches, but the config has no data.calibration",
                path="data.calibration",
                hint="add data.calibration (a few hundred samples like those served), or set ship.quantize: none",
            )
        feeds = _calibration_feeds(calibration, calibration_batches)
    targets = artifact_paths(runtime, out_dir, stem)
    make_dir(out_dir)
    model.eval()
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=f".{stem}.") as tmp:
        work = Path(tmp)
        try:
            with torch.inference_mode(False), torch.no_grad():
                if runtime == "onnxruntime":
                    written = _to_onnxruntime(model, example, work, stem, quantize, feeds, output)
                else:
                    written = _to_openvino(model, example, work, stem, quantize, feeds, output)
        except ConfigError:
            raise
        except Exception as e:  # the converters raise many unrelated types
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            raise ConfigError(
                f"the student cannot be converted to {runtime}: {type(e).__name__}: {reason}",
                path="ship.runtime",
                hint="set ship.runtime: torch (the .ccz serves in PyTorch), or change the passes",
            ) from e
        # the data file first: a reader that finds the .xml finds its weights
        for src, dst in sorted(
            zip(written, targets, strict=True), key=lambda p: p[1].suffix == ".xml"
        ):
            os.replace(src, dst)
    return Served(
        runtime=runtime,
        quantize=quantize,
        files=tuple(targets),
        module=load(runtime, targets, threads=threads, student=model),
    )


def _calibration_feeds(
    calibration: Callable[[], Iterable[Inputs]], n: int
) -> list[list[np.ndarray]]:
    """The first ``n`` calibration batches as numpy arrays in :func:`input_names` order."""
    feeds = []
    for x in calibration():
        feeds.append([_array(t) for _, t in named_tensors(x)])
        if len(feeds) >= n:
            break
    return feeds


def _array(t: torch.Tensor) -> np.ndarray:
    if t.dtype == torch.float32 and t.is_cpu and t.is_contiguous() and not t.requires_grad:
        return t.numpy()  # the usual batch, shared as it is (no tensor calls on the way)
    t = t.detach().cpu()
    if t.is_floating_point() and t.dtype != torch.float32:
        t = t.float()
    return t.contiguous().numpy()


def _to_onnxruntime(
    model: nn.Module,
    example: Inputs,
    work: Path,
    stem: str,
    quantize: str,
    feeds: list[list[np.ndarray]],
    output: OutputSpec,
) -> list[Path]:
    fp32 = work / f"{stem}.fp32.onnx"
    write_onnx(model, example, fp32, output=output)
    if quantize != "int8":
        return [fp32]
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    names = input_names(example)
    transformer = is_transformer(model)

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._feeds: Iterator[list[np.ndarray]] = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            arrays = next(self._feeds, None)
            return None if arrays is None else dict(zip(names, arrays, strict=True))

    # ONNX Runtime's recommended pre-processing (shape inference, graph optimisation);
    # its symbolic shape inference cannot follow the Reshape of a free batch dimension
    pre = work / f"{stem}.pre.onnx"
    with _quiet_stdout(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        out = work / f"{stem}.onnx"
        quantize_static(
            str(pre),
            str(out),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            # a transformer keeps its attention arithmetic, LayerNorm and GELU in float
            # (all of it in int8 took MiniLM's cosine to its teacher down to 0.33)
            op_types_to_quantize=["MatMul", "Gemm"] if transformer else None,
        )
    return [out]


def _to_openvino(
    model: nn.Module,
    example: Inputs,
    work: Path,
    stem: str,
    quantize: str,
    feeds: list[list[np.ndarray]],
    output: OutputSpec,
) -> list[Path]:
    import openvino as ov

    refuse_torch_ao(model, "OpenVINO")
    names = input_names(example)
    tensors = tuple(t for _, t in named_tensors(example))
    with warnings.catch_warnings(), _quiet_stdout():
        warnings.simplefilter("ignore")
        ov_model = (
            ov.convert_model(export_program(positional(model, example, output), tensors))
            if holds_graph(model)  # tracing cannot run a symbolic batch size
            else ov.convert_model(
                positional(model, example, output),
                example_input=tensors[0] if len(tensors) == 1 else tensors,
            )
        )
    for port, name in zip(ov_model.inputs, names, strict=True):
        port.get_tensor().set_names({name})
    if quantize == "int8":
        import nncf

        with warnings.catch_warnings(), _nncf_quiet():
            warnings.simplefilter("ignore")
            ov_model = nncf.quantize(
                ov_model,
                nncf.Dataset(feeds),
                subset_size=len(feeds),
                # NNCF's documented setting for transformers (attention patterns kept in
                # float): MiniLM's token cosine to its teacher 0.48 -> 0.94 with it
                model_type=nncf.ModelType.TRANSFORMER if is_transformer(model) else None,
            )
    elif quantize == "int8-weights":
        import nncf

        with warnings.catch_warnings(), _nncf_quiet():
            warnings.simplefilter("ignore")
            # embeddings included (NNCF compresses Gather tables as well as MatMuls):
            # MiniLM's word table is half its parameters
            ov_model = nncf.compress_weights(ov_model, mode=nncf.CompressWeightsMode.INT8_ASYM)
    _stable_names(ov_model)
    xml = work / f"{stem}.xml"
    ov.save_model(ov_model, str(xml), compress_to_fp16=False)
    return [xml, xml.with_suffix(".bin")]


# an operation name OpenVINO made up from a process-wide counter: Constant_31694
_COUNTED = re.compile(r"\b([A-Z][A-Za-z]*)_(\d+)\b")


def _stable_names(ov_model: Any) -> None:
    """Renumber the names OpenVINO generates from a process-wide counter (in the order
    of the graph), so that the same student gives the same ``.xml`` in any process, also
    the second time in one (``tune``, tests)."""
    numbers: dict[str, int] = {}

    def renumber(m: re.Match[str]) -> str:
        n = numbers.setdefault(m.group(2), len(numbers))
        return f"{m.group(1)}_{n}"

    ov_model.set_friendly_name("student")
    for op in ov_model.get_ordered_ops():
        op.set_friendly_name(_COUNTED.sub(renumber, op.get_friendly_name()))


def is_transformer(model: nn.Module) -> bool:
    """Whether ``model`` has attention layers (torch's MultiheadAttention, or a module
    whose class name says Attention, as Hugging Face's do), or, for a model rebuilt from
    its shipped graph, a graph that calls scaled dot-product attention or softmax."""
    attention = ("scaled_dot_product", "_softmax", "softmax")
    for m in model.modules():
        if isinstance(m, nn.MultiheadAttention) or "Attention" in type(m).__name__:
            return True
        if isinstance(m, torch.fx.GraphModule) and any(
            node.op == "call_function" and any(a in str(node.target) for a in attention)
            for node in m.graph.nodes
        ):
            return True
    return False


@contextlib.contextmanager
def _nncf_quiet() -> Iterator[None]:
    """NNCF's progress bars and INFO lines stay out of the gate's output."""
    import logging

    log = logging.getLogger("nncf")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with _quiet_stdout():
            yield
    finally:
        log.setLevel(level)


def load(
    runtime: str, files: Sequence[Path], *, threads: int = 1, student: nn.Module | None = None
) -> nn.Module:
    """The artifact ``files`` loaded in ``runtime``, as a module taking the student's
    inputs (one tensor, positional or keyword tensors) and returning a torch tensor.

    ``student`` (the torch model the artifact was made from) is kept as a submodule so
    that parameter counts and sparsity describe the same student; it is never run.
    """
    if runtime == "onnxruntime":
        return RuntimeModel(_onnxruntime_runner(files[0], threads), runtime, student)
    if runtime == "openvino":
        return RuntimeModel(_openvino_runner(files[0], threads), runtime, student)
    raise ValueError(f"no loader for runtime {runtime!r}")


Runner = Callable[[dict[str, np.ndarray]], np.ndarray]


def _onnxruntime_runner(path: Path, threads: int) -> Runner:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.use_deterministic_compute = True
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    wanted = {i.name for i in session.get_inputs()}

    def run(feed: dict[str, np.ndarray]) -> np.ndarray:
        (y,) = session.run(["output"], {k: v for k, v in feed.items() if k in wanted})
        return np.asarray(y)

    return run


def _openvino_runner(path: Path, threads: int) -> Runner:
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(
        str(path),
        "CPU",
        {
            "INFERENCE_NUM_THREADS": threads,
            "NUM_STREAMS": 1,
            "PERFORMANCE_HINT": "LATENCY",
            # fp32 stays fp32 (a CPU with bf16 units would otherwise run it in bf16)
            "INFERENCE_PRECISION_HINT": "f32",
        },
    )
    request = compiled.create_infer_request()
    index = {p.get_any_name(): i for i, p in enumerate(compiled.inputs)}

    def run(feed: dict[str, np.ndarray]) -> np.ndarray:
        # inputs by index and the output read from the request's own tensor: looking
        # ports up by object and indexing infer's result dict cost about 5% of a demo
        # CNN's batch of 256, timed against a plain infer on the same compiled file
        request.infer({index[name]: a for name, a in feed.items() if name in index})
        out: np.ndarray = request.get_output_tensor(0).data.copy()
        return out

    return run


class RuntimeModel(nn.Module):
    """A runtime artifact behind the module interface the gate measures: inputs as the
    student takes them, a float32 torch tensor out (the output ``model.output`` selected
    when the artifact was made)."""

    def __init__(self, run: Runner, runtime: str, student: nn.Module | None = None) -> None:
        super().__init__()
        self._run = run
        self.runtime = runtime
        if student is not None:
            self.student = student

    def forward(self, *args: torch.Tensor, **kwargs: torch.Tensor) -> torch.Tensor:
        if not kwargs and len(args) == 1 and type(args[0]) is torch.Tensor:
            # one tensor, named as input_names names it, without its structure walk
            return torch.from_numpy(self._run({SINGLE_INPUT: _array(args[0])}))
        inputs: Inputs = kwargs if kwargs else args[0] if len(args) == 1 else args
        feed = {
            name: _array(t)
            for name, (_, t) in zip(input_names(inputs), named_tensors(inputs), strict=True)
        }
        return torch.from_numpy(self._run(feed))

    def extra_repr(self) -> str:
        return f"runtime={self.runtime}"
