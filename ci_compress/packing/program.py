"""The model's graph in the shipped file: a ``torch.export`` program without its weights.

A model with modules of the user's own classes (a pruned or distilled student, a model
from a pickle, TorchScript or a Hugging Face folder) cannot be rebuilt from the
architecture spec alone. The packer exports it (``torch.export``, batch dimension free)
and stores only the program's graph (torch's JSON serialization, without state_dict,
constants or example inputs) as one more stream of the payload; the weights stay in the
packed tensor streams with their compact encodings. At load, the graph is checked, then
deserialized with the decoded tensors handed over as dicts: nothing is unpickled.

The graph is untrusted input, and torch's deserializer is not written for that: it
resolves any ``torch.*`` attribute named as a node's target (``torch.os.system`` is one),
parses shape expressions with ``sympy.sympify`` (``eval``) and turns ``guards_code`` into
Python source that ``ExportedProgram.module()`` executes. :func:`check_graph` therefore
accepts only graphs whose node targets are operator overloads of a few namespaces (or the
symbolic-shape operators), whose shape expressions are arithmetic over symbols, with no
guards code, custom objects or extension operators, and it blanks the nodes' metadata
(stack traces and module paths of the machine that packed the model) before torch sees it.

Imports torch at top: :mod:`ci_compress.packing.file` imports it on use.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import json
import operator
import re
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ci_compress.errors import ArtifactError
from ci_compress.layers.batches import Inputs
from ci_compress.layers.inference import no_cache

# A graph's JSON may be at most this large (MiniLM-L6, 6 transformer layers: ~0.5 MB);
# checked before the stream is read.
MAX_PROGRAM_BYTES = 64 * 1024 * 1024
# The operator namespaces a shipped graph may call (torch.ops.<namespace>.<op>.<overload>).
OP_NAMESPACES = ("aten", "prims", "quantized", "_quantized", "higher_order")
# Shape expressions (sympy's srepr, e.g. "Mul(Integer(8), Symbol('s31', positive=True,
# integer=True))"), which torch hands to sympy.sympify (eval): only calls of these names,
# numbers, arithmetic and symbol names such as s0 or u3 pass (checked on the parsed AST).
_EXPR_NAMES = frozenset(
    {
        *("Symbol", "Integer", "Float", "Rational", "Mul", "Add", "Pow", "Max", "Min", "Abs"),
        *("Eq", "Ne", "Lt", "Le", "Gt", "Ge", "StrictLessThan", "StrictGreaterThan"),
        *("LessThan", "GreaterThan", "Equality", "Unequality", "And", "Or", "Not"),
        *("BooleanTrue", "BooleanFalse", "true", "false", "oo", "zoo", "nan", "Infinity"),
        *("NegativeOne", "One", "Zero", "Half", "Piecewise", "ExprCondPair", "floor", "ceiling"),
        *("FloorDiv", "ModularIndexing", "Where", "PythonMod", "Mod", "CleanDiv", "CeilToInt"),
        *("FloorToInt", "CeilDiv", "LShift", "RShift", "PowByNatural", "FloatPow"),
        *("TruncToFloat", "TruncToInt", "RoundToInt", "RoundDecimal", "ToFloat"),
        *("FloatTrueDiv", "IntTrueDiv", "IsNonOverlappingAndDenseIndicator", "Identity"),
        *("BitwiseFn_bitwise_and", "BitwiseFn_bitwise_or", "OpaqueUnaryFn_sqrt"),
    }
)
_EXPR_FLAGS = frozenset(
    {"positive", "integer", "nonnegative", "negative", "real", "finite", "evaluate"}
)
_SYMBOL = re.compile(r"[a-z]{1,4}\d+")
# Names torch writes into the Python source of the graph module it generates (variables,
# attributes, forward's arguments): plain identifiers and dotted module paths only.
_NAME_KEYS = (
    "name",
    "as_name",
    "fqn",
    "parameter_name",
    "buffer_name",
    "tensor_constant_name",
    "forward_arg_names",
    "custom_obj_name",
)
_NAME = re.compile(r"[A-Za-z0-9_.]{0,500}")
# Containers the program's inputs and outputs may be made of (torch's pytree rebuilds
# them by name; collections.defaultdict would import a module the file names).
_TREE_TYPES = frozenset(
    {
        "builtins.tuple",
        "builtins.list",
        "builtins.dict",
        "collections.OrderedDict",
        "collections.namedtuple",
        "torch.Size",
        "torch.fx.immutable_collections.immutable_list",
        "torch.fx.immutable_collections.immutable_dict",
    }
)
_PYTHON_TARGETS = {f"_operator.{n}" for n in ("getitem",)}


class ProgramError(Exception):
    """The model cannot be exported (torch.export's reason, first line)."""


@dataclass
class Program:
    """An exported model's graph and the tensors it takes, by the names it uses."""

    graph: bytes  # torch's JSON serialization of the program, without tensors
    tensors: dict[str, torch.Tensor]  # parameters, buffers and constants, by their names


class ExportedProgram(nn.Module):
    """A loaded ``torch.export`` program as a module; ``program`` is its graph module.

    The graph is fixed in the mode it was exported in (eval): torch refuses ``.eval()``
    and ``.train()`` on it, and the gate calls ``.eval()`` on every model it measures, so
    ``train(mode)`` records the flag and leaves the graph alone.
    """

    def __init__(self, program: nn.Module) -> None:
        super().__init__()
        self.program = program

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.program(*args, **kwargs)

    def train(self, mode: bool = True) -> ExportedProgram:
        # the graph runs as exported (eval behaviour of dropout, batch norm is baked in)
        self.training = mode
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> ExportedProgram:
        # torch's own pytree specs warn (FutureWarning) when a graph is deep-copied;
        # the gate copies the teacher once, and that line would only be noise.
        clone = ExportedProgram.__new__(ExportedProgram)
        memo[id(self)] = clone
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            for key, value in self.__dict__.items():
                clone.__dict__[key] = copy.deepcopy(value, memo)
        return clone


# ---------------------------------------------------------------- packing


def export_program(model: nn.Module, example: Inputs) -> torch.export.ExportedProgram:
    """``torch.export.export`` of ``model`` on ``example`` with the batch dimension free
    (the program serves any batch size): the ``.pt2`` export, and the graph the packed
    file ships for models of custom classes (:mod:`ci_compress.packing.program`)."""
    import torch

    if isinstance(example, Mapping):
        args: tuple[Any, ...] = ()
        kwargs: dict[str, Any] = dict(example)
    elif isinstance(example, torch.Tensor):
        args, kwargs = (example,), {}
    else:
        args, kwargs = tuple(example), {}
    batch = torch.export.Dim.DYNAMIC
    shapes: Any = (
        {name: {0: batch} for name in kwargs} if kwargs else tuple({0: batch} for _ in args)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if isinstance(model, torch.jit.ScriptModule):
            # TorchScript: torch's converter to a program, whose module is then exported
            # like any other (the converter fixes every shape)
            from torch._export.converter import TS2EPConverter

            model = TS2EPConverter(model, args, kwargs).convert().module()
        try:
            params = list(inspect.signature(model.forward).parameters.values())
        except (TypeError, ValueError):
            params = []
        if args and params and params[0].kind is inspect.Parameter.VAR_POSITIONAL:
            shapes = (shapes,)  # forward(*args): the positional inputs are one argument
        with no_cache(model):  # a whole-sequence forward; a cache object is not a tensor
            return torch.export.export(model, args, kwargs, dynamic_shapes=shapes)


def make_program(model: nn.Module, example: Inputs) -> Program:
    """Export ``model`` (in eval mode, batch dimension free) and serialize its graph alone.

    Raises :class:`ProgramError` with torch's reason when the model cannot be exported
    (data-dependent control flow, custom objects, ...).
    """
    from torch._export.serde import serialize as serde

    was_training = model.training
    model.eval()
    try:
        ep = export_program(model, example)
        art = serde.serialize(
            ep,
            serialize_state_dict=False,
            serialize_constants=False,
            serialize_example_inputs=False,
        )
    except Exception as e:  # torch.export raises many unrelated types
        raise ProgramError(_first_line(e)) from None
    finally:
        model.train(was_training)
    tensors: dict[str, torch.Tensor] = {}
    for spec in ep.graph_signature.input_specs:
        if spec.target is None:
            continue
        value = ep.state_dict.get(spec.target, ep.constants.get(spec.target))
        if not isinstance(value, torch.Tensor):
            raise ProgramError(
                f"{spec.target} is a {type(value).__name__}, not a tensor the file can store"
            )
        tensors[spec.target] = value.detach()
    doc = json.loads(art.exported_program)
    # guards are Python source run at load (and only re-check input shapes); stack traces
    # and module paths say where the model was packed: neither ships
    doc["guards_code"] = []
    for node in _nodes(doc):
        node["metadata"] = {}
    graph = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    check_graph(graph, set(tensors))  # what the loader refuses, the packer does not write
    return Program(graph, tensors)


def _first_line(e: BaseException) -> str:
    text = (str(e).strip().splitlines() or [""])[0][:300]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


# ---------------------------------------------------------------- loading


@dataclass
class _Roles:
    parameters: set[str]
    buffers: set[str]  # persistent: the state_dict's
    constants: set[str]  # non-persistent buffers and lifted tensor constants


def check_graph(graph: bytes, stored: set[str]) -> dict[str, Any]:
    """Parse and check an untrusted graph; returns the JSON document torch will read.

    Every operator must be allowed, every shape expression arithmetic, and the tensors
    the graph takes exactly the ``stored`` ones; anything else is an ArtifactError.
    """
    if len(graph) > MAX_PROGRAM_BYTES:
        raise ArtifactError(f"the program is {len(graph)} bytes, more than {MAX_PROGRAM_BYTES}")
    try:
        doc = json.loads(graph)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"the program is not valid JSON ({e}); the file is corrupt") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("graph_module"), dict):
        raise ArtifactError("the program has no graph_module; the file is corrupt")
    if doc.get("guards_code"):
        raise ArtifactError("the program carries guards code, which ci-compress never runs")
    for node in _nodes(doc):
        _check_target(node.get("target"))
        node["metadata"] = {}
    doc["graph_module"]["metadata"] = {}
    for target in _values(doc, "as_operator"):
        _check_target(target)
    for key in _NAME_KEYS:
        for value in _values(doc, key):
            for name in value if isinstance(value, list) else [value]:
                if not isinstance(name, str) or not _NAME.fullmatch(name):
                    raise ArtifactError(
                        f"the program has a {key} ci-compress refuses: {str(name)[:80]!r}"
                    )
    _check_tree_types(doc)
    for expr in _exprs(doc):
        _check_expr(expr)
    for name in doc.get("range_constraints") or {}:
        _check_expr(name)
    if _values(doc, "custom_obj_values") or _values(doc, "as_custom_obj"):
        raise ArtifactError("the program uses custom (TorchBind) objects, which a file cannot hold")
    roles = _roles(doc)
    needed = roles.parameters | roles.buffers | roles.constants
    missing = sorted(needed - stored)
    if missing:
        raise ArtifactError(
            f"the program takes tensor {missing[0]}, which the file does not store"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            + "; the file is corrupt"
        )
    unused = sorted(stored - needed)
    if unused:
        raise ArtifactError(
            f"the packed file has tensors the program does not use: {', '.join(unused[:5])}; "
            "the file is corrupt or was written for another model"
        )
    return doc


def _nodes(doc: Any) -> Iterator[dict[str, Any]]:
    """Every node of every graph (subgraphs of control-flow operators included)."""
    if isinstance(doc, dict):
        if isinstance(doc.get("nodes"), list):
            for node in doc["nodes"]:
                if not isinstance(node, dict):
                    raise ArtifactError("the program has a node that is not an object")
                yield node
        for value in doc.values():
            yield from _nodes(value)
    elif isinstance(doc, list):
        for value in doc:
            yield from _nodes(value)


def _values(doc: Any, key: str) -> list[Any]:
    found: list[Any] = []
    stack = [doc]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if item.get(key):
                found.append(item[key])
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


def _exprs(doc: Any) -> Iterator[str]:
    for value in _values(doc, "expr_str"):
        if not isinstance(value, str):
            raise ArtifactError("the program has a shape expression that is not a string")
        yield value


def _check_target(target: Any) -> None:
    if not isinstance(target, str):
        raise ArtifactError("the program has a node without an operator name")
    if target in _PYTHON_TARGETS or _is_sym_op(target):
        return
    parts = target.split(".")
    ok = len(parts) in (4, 5) and parts[:2] == ["torch", "ops"] and parts[2] in OP_NAMESPACES
    if ok:
        resolved: Any = torch.ops
        try:
            for part in parts[2:]:
                resolved = getattr(resolved, part)
        except (AttributeError, RuntimeError):
            ok = False
        else:
            ok = isinstance(resolved, torch._ops.OpOverload | torch._ops.HigherOrderOperator)
    if not ok:
        raise ArtifactError(
            f"the program calls {target[:100]!r}, which is not an operator this torch "
            f"({torch.__version__}) has or ci-compress runs",
            hint="pack the model again with this torch version",
        )


def _is_sym_op(target: str) -> bool:
    """The symbolic-shape operators torch's serializer writes by their Python names."""
    from torch._export.serde.serialize import _SYM_OPS

    names = set()
    for op in _SYM_OPS:
        module = getattr(op, "__module__", None) or (
            "_operator" if op in vars(operator).values() else ""
        )
        names.add(f"{module}.{getattr(op, '__name__', '')}")
    return target in names


def _check_expr(expr: Any) -> None:
    import ast

    refused = ArtifactError(
        f"the program has a shape expression ci-compress refuses: {str(expr)[:80]!r}"
    )
    if not isinstance(expr, str) or len(expr) > 10_000:
        raise refused
    try:
        tree = ast.parse(expr, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise refused from None
    arith: tuple[type[ast.AST], ...] = (ast.Expression, ast.Load, ast.Compare, ast.BoolOp)
    arith += (ast.BinOp, ast.UnaryOp, ast.operator, ast.unaryop, ast.cmpop, ast.boolop)
    for node in ast.walk(tree):
        if isinstance(node, arith):
            continue
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in _EXPR_NAMES:
                raise refused
            if any(k.arg not in _EXPR_FLAGS for k in node.keywords):
                raise refused
        elif isinstance(node, ast.keyword):
            if not (isinstance(node.value, ast.Constant) and isinstance(node.value.value, bool)):
                raise refused
        elif isinstance(node, ast.Name):
            if node.id not in _EXPR_NAMES and not _SYMBOL.fullmatch(node.id):
                raise refused
        elif isinstance(node, ast.Constant):
            value = node.value
            if isinstance(value, str):
                if not _SYMBOL.fullmatch(value):
                    raise refused
            elif not isinstance(value, int | float | bool) or (
                isinstance(value, int) and abs(value) > 2**64
            ):
                raise refused
        else:
            raise refused


def _roles(doc: dict[str, Any]) -> _Roles:
    roles = _Roles(set(), set(), set())
    try:
        specs = doc["graph_module"]["signature"]["input_specs"]
        for spec in specs:
            ((kind, body),) = spec.items()
            if kind == "parameter":
                roles.parameters.add(str(body["parameter_name"]))
            elif kind == "buffer":
                (roles.buffers if body.get("persistent", True) else roles.constants).add(
                    str(body["buffer_name"])
                )
            elif kind == "tensor_constant":
                roles.constants.add(str(body["tensor_constant_name"]))
            elif kind != "user_input":
                raise ArtifactError(f"the program takes a {kind} input, which a file cannot hold")
    except (KeyError, TypeError, ValueError, AttributeError):
        raise ArtifactError("the program's signature is malformed; the file is corrupt") from None
    return roles


# Output classes torch's pytree must know by name (a Hugging Face model returns a
# ModelOutput dataclass, registered when transformers defines it): the packages whose
# modules the loader may import for that, since they are installed code, not the file's.
_OUTPUT_PACKAGES = re.compile(r"transformers(\.[A-Za-z_][A-Za-z0-9_]*)+")


def _tree_types(doc: dict[str, Any]) -> set[str]:
    """The container types the program's input and output structures name."""
    names: set[str] = set()
    for entry in doc["graph_module"].get("module_call_graph") or []:
        signature = entry.get("signature") if isinstance(entry, dict) else None
        for key in ("in_spec", "out_spec"):
            text = signature.get(key) if isinstance(signature, dict) else None
            if text is None:
                continue
            try:
                names.update(str(t) for t in _values(json.loads(text), "type"))
            except (TypeError, json.JSONDecodeError):
                raise ArtifactError(
                    "the program's input or output structure is malformed"
                ) from None
    return names


def _check_tree_types(doc: dict[str, Any]) -> None:
    for name in sorted(_tree_types(doc)):
        if name not in _TREE_TYPES and not _OUTPUT_PACKAGES.fullmatch(name.rpartition(".")[0]):
            raise ArtifactError(
                f"the program's inputs or outputs are built of a {name[:120]}, which ci-compress refuses"
            )


def _register_output_types(doc: dict[str, Any]) -> None:
    """Make sure every container type the program's inputs and outputs name is known to
    torch's pytree, importing it from ``transformers`` if that defines it."""
    import importlib
    import importlib.util

    from torch.utils import _pytree

    names = _tree_types(doc)
    for name in sorted(names - set(_pytree.SERIALIZED_TYPE_TO_PYTHON_TYPE)):
        module = name.rpartition(".")[0]
        if _OUTPUT_PACKAGES.fullmatch(module) and importlib.util.find_spec("transformers"):
            with contextlib.suppress(ImportError), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                importlib.import_module(module)
        if name not in _pytree.SERIALIZED_TYPE_TO_PYTHON_TYPE:
            raise ArtifactError(
                f"the program returns or takes a {name[:120]}, a type this Python does not know",
                hint="install and import the package that defines it (e.g. transformers) before loading the file",
            )


def load_program(graph: bytes, tensors: dict[str, torch.Tensor]) -> ExportedProgram:
    """Rebuild a model from its checked graph and exactly the stored tensors (no pickle)."""
    from torch._export.serde import serialize as serde

    doc = check_graph(graph, set(tensors))
    roles = _roles(doc)
    state: dict[str, Any] = {
        n: nn.Parameter(t, requires_grad=False) if n in roles.parameters else t
        for n, t in tensors.items()
        if n in roles.parameters or n in roles.buffers
    }
    constants: dict[str, Any] = {n: t for n, t in tensors.items() if n in roles.constants}
    _register_output_types(doc)
    clean = json.dumps(doc).encode()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # dicts are taken as they are (deserialize_torch_artifact): nothing is unpickled
            artifact = serde.SerializedArtifact(clean, state, constants, b"")  # type: ignore[arg-type]
            ep = serde.deserialize(artifact)
            module = ep.module()
    except ArtifactError:
        raise
    except Exception as e:  # the deserializer raises many unrelated types on a bad graph
        raise ArtifactError(
            f"cannot rebuild the program ({_first_line(e)}); the file is corrupt"
        ) from None
    return ExportedProgram(module)


# ---------------------------------------------------------------- .pt2 archives

_ARCHIVE_MODEL = "models/model.json"
_ARCHIVE_CONFIGS = (
    "data/weights/model_weights_config.json",
    "data/constants/model_constants_config.json",
)
_ARCHIVE_DIRS = {_ARCHIVE_CONFIGS[0]: "data/weights/", _ARCHIVE_CONFIGS[1]: "data/constants/"}


def read_archive(path: Path) -> ExportedProgram:
    """A ``.pt2`` file written by ``torch.export.save``, read without ``torch.export.load``.

    ``torch.export.load`` unpickles: a member it cannot read with ``weights_only=True``
    (the example inputs, a pickled weight) is read again with ``weights_only=False``,
    which runs whatever code the file holds. Here the program's JSON goes through
    :func:`check_graph` like a packed file's, each tensor is rebuilt from its raw bytes
    and the metadata beside it (sizes checked against the bytes), and a member stored as
    a pickle is refused; the example inputs are not read at all.
    """
    import zipfile

    from torch._export.serde import serialize as serde

    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as z:
            members = {i.filename.split("/", 1)[-1]: i for i in z.infolist() if "/" in i.filename}
            if sum(i.file_size for i in members.values()) > max(64 * size, 1 << 20):
                raise ArtifactError(f"{path}: its members expand to more than 64 times the file")

            def read(name: str) -> bytes:
                info = members.get(name)
                if info is None:
                    raise ArtifactError(
                        f"{path} has no {name}: not a torch.export archive ci-compress reads",
                        hint="save it with torch.export.save from torch >= 2.6",
                    )
                return z.read(info)

            graph = read(_ARCHIVE_MODEL)
            tensors: dict[str, torch.Tensor] = {}
            for config_name in _ARCHIVE_CONFIGS:
                config = json.loads(read(config_name)).get("config", {})
                for name, entry in config.items():
                    tensors[name] = _archive_tensor(
                        path, name, entry, read, _ARCHIVE_DIRS[config_name], serde
                    )
    except (zipfile.BadZipFile, OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path} is not a readable torch.export archive ({e})") from None
    return load_program(graph, tensors)


def _archive_tensor(
    path: Path, name: str, entry: Any, read: Any, folder: str, serde: Any
) -> torch.Tensor:
    import torch

    if not isinstance(entry, dict) or entry.get("use_pickle") is not False:
        raise ArtifactError(
            f"{path}: tensor {name} is stored as a pickle, which ci-compress does not load",
            hint="export the model again with plain tensors (torch.export.save)",
        )
    meta = entry.get("tensor_meta") or {}
    dtype = serde._SERIALIZE_TO_TORCH_DTYPE.get(meta.get("dtype"))
    fields = [*meta.get("sizes", []), *meta.get("strides", []), meta.get("storage_offset")]
    values = [f.get("as_int") if isinstance(f, dict) else None for f in fields]
    if dtype is None or not all(isinstance(v, int) and v >= 0 for v in values):
        raise ArtifactError(f"{path}: tensor {name} has metadata ci-compress cannot read")
    ints: list[int] = [int(v) for v in values if v is not None]
    rank = len(meta.get("sizes", []))
    sizes, strides, offset = ints[:rank], ints[rank:-1], ints[-1]
    raw = read(folder + str(entry.get("path_name")))
    item = torch.empty((), dtype=dtype).element_size()
    span = 1 + sum((n - 1) * s for n, s in zip(sizes, strides, strict=False)) if all(sizes) else 0
    if len(sizes) != len(strides) or (offset + span) * item > len(raw):
        raise ArtifactError(f"{path}: tensor {name} needs more bytes than the file stores")
    flat = torch.frombuffer(bytearray(raw), dtype=dtype) if raw else torch.empty(0, dtype=dtype)
    return flat.as_strided(sizes, strides, offset).clone()
