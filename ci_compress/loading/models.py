"""Loading the original (teacher) model from a file, safely.

Supported files:

* TorchScript (``torch.jit.save``): loaded with ``torch.jit.load`` (no pickle of Python
  objects). Passes need an eager model: a scripted tree of known layers is converted;
  anything else needs a state_dict plus ``model.factory``.
* state_dict in ``.safetensors``, or in ``.pt``/``.pth`` read with
  ``torch.load(weights_only=True)``, loaded into the module ``model.factory`` returns.
* a ci-compress packed file (``.ccz``).
* a fully pickled ``nn.Module`` only with ``model.allow_pickle: true``: unpickling runs
  code, so ci-compress refuses by default and says so.
* a Hugging Face ``save_pretrained`` folder (``config.json`` plus weights), loaded with
  the ``transformers`` class ``model.hf.auto_class`` names (``AutoModel`` by default),
  offline: ``local_files_only=True`` and ``HF_HUB_OFFLINE=1`` while it loads, so nothing
  is downloaded; ``transformers`` is an optional extra (``ci-compress[hf]``), imported
  only here. The packed student is rebuilt from the same folder's ``config.json``.
* a ``torch.export`` program (``.pt2``, ``torch.export.save``): loaded with
  ``torch.export.load`` (no pickle), run as it was exported. Its layers are graph
  operations, not modules, so passes cannot rewrite it: gate it with ``passes: []``.
"""

from __future__ import annotations

import hashlib
import re
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from ci_compress.errors import ArtifactError, ConfigError
from ci_compress.files import file_sha256
from ci_compress.layers.inspect import weight_tensors
from ci_compress.loading.download import download
from ci_compress.packing import codecs
from ci_compress.packing.file import MAGIC, MAGICS, load_packed
from ci_compress.refs import import_factory

if TYPE_CHECKING:
    from torch import nn

    from ci_compress.config import ModelSource


@dataclass
class LoadedModel:
    module: nn.Module
    path: Path
    file_bytes: int
    sha256: str
    kind: str  # torchscript | state_dict | packed | pickle | huggingface | export


def model_factory(
    source: ModelSource, base_dir: Path | None = None
) -> Callable[[], nn.Module] | None:
    """What builds the architecture a state_dict or packed file is loaded into.

    ``model.factory`` (imported with the config's folder ``base_dir`` on the path); for
    a Hugging Face folder, the model class built from its ``config.json`` (random
    weights, replaced by the stored ones); for a ``.pt2`` program, the program itself.
    """
    local = _local_path(source, base_dir)
    if not source.factory and local is not None:
        if local.is_dir() and (local / HF_CONFIG).is_file():
            return lambda: hf_architecture(local, source)
        if local.suffix == EXPORT_SUFFIX and local.is_file():
            return lambda: load_export(local)
    if not source.factory:
        return None
    fn = import_factory(source.factory, path="model.factory", base_dir=base_dir)
    kwargs = dict(source.factory_kwargs)

    def make() -> nn.Module:
        from torch import nn

        try:
            model = fn(**kwargs)
        except Exception as e:
            raise ArtifactError(
                f"model.factory {source.factory} raised {type(e).__name__}: {e}"
            ) from None
        if not isinstance(model, nn.Module):
            raise ArtifactError(
                f"model.factory {source.factory} returned {type(model).__name__}, not a torch.nn.Module"
            )
        return model

    return make


def _check_zip(path: Path) -> None:
    """Verify the CRC-32 of every member of a zip-format file (torch.save, TorchScript).

    torch's own zip reader does not check them: a TorchScript file with rewritten
    weight bytes loads silently and is gated as if it were the real model.
    """
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError) as e:
        raise ArtifactError(
            f"{path} is a corrupt zip archive ({e})",
            hint="the file is truncated or was modified; export it again",
        ) from None
    if bad is not None:
        raise ArtifactError(
            f"{path} is corrupt or was tampered with: the checksum of {bad} does not match",
            hint="the file was modified after it was saved; export it again, and pin model.sha256",
        )


def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any("/code/" in n for n in names) and any(n.endswith("constants.pkl") for n in names)


def load_model_file(
    path: Path, source: ModelSource, *, base_dir: Path | None = None
) -> LoadedModel:
    """Load a local model file (or Hugging Face folder) as an ``nn.Module`` in eval mode.

    ``base_dir`` (the config's folder) is importable for ``model.factory``.
    """
    import torch

    if not path.exists():
        raise ArtifactError(
            f"model file not found: {path}",
            hint="check model.path (relative paths are relative to the config file)",
        )
    if path.is_dir():
        if (path / HF_CONFIG).is_file():
            return load_hf_dir(path, source)
        raise ArtifactError(
            f"model.path is a folder, not a file: {path}",
            hint="a Hugging Face save_pretrained folder holds config.json; else point model.path at the model file",
        )
    if source.hf is not None:
        raise ConfigError(
            f"is set, but model.path {path.name} is a file, not a Hugging Face folder",
            path="model.hf",
            hint="point model.path at the save_pretrained folder (with config.json), or remove model.hf",
        )
    size = path.stat().st_size
    if size == 0:
        raise ArtifactError(f"model file is empty: {path}")
    digest = file_sha256(path)
    if source.sha256 and digest.lower() != source.sha256.lower():
        raise ArtifactError(
            f"sha256 of {path} is {digest}, model.sha256 expects {source.sha256}",
            hint="the file changed: re-pin model.sha256 only if the new file is trusted",
        )
    if path.suffix == EXPORT_SUFFIX:
        _check_zip(path)
        program = load_export(path)
        _check_finite(program, path)
        return LoadedModel(module=program, path=path, file_bytes=size, sha256=digest, kind="export")
    factory = model_factory(source, base_dir)
    with path.open("rb") as f:
        head = f.read(len(MAGIC))

    def done(module: nn.Module, kind: str) -> LoadedModel:
        module.eval()
        _check_finite(module, path)
        return LoadedModel(module=module, path=path, file_bytes=size, sha256=digest, kind=kind)

    if head in MAGICS or path.suffix == ".ccz":
        module, _ = load_packed(path, factory=factory)
        return done(module, "packed")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise ArtifactError(f"{path} is not a readable safetensors file ({e})") from None
        return done(_into_factory(state, factory, path), "state_dict")
    _check_zip(path)
    if _is_torchscript(path):
        try:
            with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript; we still read it
                warnings.filterwarnings("ignore", category=DeprecationWarning)
                # torch.jit.load is unannotated; this path only ever holds a scripted module
                jit_load = cast("Callable[..., torch.jit.ScriptModule]", torch.jit.load)
                scripted = jit_load(str(path), map_location="cpu")
        except Exception as e:  # torch raises RuntimeError and friends for bad archives
            raise ArtifactError(
                f"{path} looks like TorchScript but cannot be loaded ({str(e).splitlines()[0]})"
            ) from None
        if factory is not None:
            return done(_into_factory(dict(scripted.state_dict()), factory, path), "torchscript")
        return done(script_to_eager(scripted, path), "torchscript")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        text = str(e)
        # Only a pickle that names a Python global needs code to load; other unpickling
        # errors ("Unsupported operand", "invalid load key") mean a corrupt file.
        needs = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        if needs:
            if not source.allow_pickle:
                raise ArtifactError(
                    f"{path} is a pickle that needs arbitrary code to load (it references {needs.group(1)}); refused",
                    hint="save a state_dict or TorchScript instead, or set model.allow_pickle: true only if you trust this file",
                ) from None
            try:
                obj = torch.load(str(path), map_location="cpu", weights_only=False)
            except Exception as e2:
                raise ArtifactError(f"cannot unpickle {path}: {type(e2).__name__}: {e2}") from None
        else:
            first = text.splitlines()[0] if text else ""
            detail = first if first and not isinstance(e, KeyError) else type(e).__name__
            raise ArtifactError(
                f"{path} is not a model file ci-compress can read ({detail[:200]})",
                hint="use TorchScript, a state_dict (.pt or .safetensors) with model.factory, or a .ccz packed file",
            ) from None
    if isinstance(obj, torch.nn.Module):
        return done(obj, "pickle")
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return done(_into_factory(obj, factory, path), "state_dict")
    raise ArtifactError(
        f"{path} holds a {type(obj).__name__}, not a state_dict or a module",
        hint="save model.state_dict() or torch.jit.script(model)",
    )


def _check_finite(module: nn.Module, path: Path) -> None:
    """A NaN or inf weight makes every later number meaningless: refuse it at load."""
    import torch

    for name, t in weight_tensors(module):
        if torch.is_floating_point(t):
            bad = int((~torch.isfinite(t)).sum())
            if bad:
                raise ArtifactError(
                    f"the model in {path} has {bad} NaN or infinite values in {name}",
                    hint="the saved model is broken; re-export it from a healthy checkpoint",
                )


def _into_factory(
    state: dict[str, Any], factory: Callable[[], nn.Module] | None, path: Path
) -> nn.Module:
    if factory is None:
        raise ArtifactError(
            f"{path} is a state_dict: ci-compress needs the architecture",
            hint="set model.factory to package.module:function returning the nn.Module",
        )
    model = factory()
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()
        detail = " ".join(line.strip() for line in first[:3])
        raise ArtifactError(
            f"the state_dict in {path} does not fit model.factory's module: {detail[:400]}",
            hint="check model.factory and model.factory_kwargs match the saved model",
        ) from None
    return model


def script_to_eager(scripted: Any, path: Path) -> nn.Module:
    """Rebuild an eager module from a TorchScript tree of known layers."""

    def convert(m: Any, where: str) -> nn.Module:
        kind = getattr(m, "original_name", type(m).__name__)
        codec = codecs.CODECS.get(kind)
        if codec is None or codec.build is not None:
            raise ArtifactError(
                f"{path}: TorchScript module {where or '<root>'} is a {kind}, which ci-compress cannot rebuild as an eager model",
                hint="give the state_dict with model.factory, or a model built from standard torch.nn layers",
            )
        if codec.container:
            out = codec.cls()()
            for name, child in m.named_children():
                out.add_module(name, convert(child, f"{where}.{name}" if where else name))
            return out  # type: ignore[no-any-return]
        state = {k: v for k, v in m.state_dict().items() if "." not in k}
        args: dict[str, Any] = {}
        for a in codec.args:
            if a == "bias":
                args[a] = "bias" in state and state["bias"] is not None
            elif a in ("in_features", "out_features") and "weight" in state:
                args[a] = state["weight"].shape[1 if a == "in_features" else 0]
            elif hasattr(m, a):
                args[a] = getattr(m, a)
        try:
            return codecs.build_module(codec, args, state)
        except (TypeError, KeyError, RuntimeError) as e:
            raise ArtifactError(
                f"{path}: cannot rebuild {kind} at {where or '<root>'} from TorchScript ({e})",
                hint="give the state_dict with model.factory",
            ) from None

    return convert(scripted, "")


def resolve_model(
    source: ModelSource,
    base_dir: Path,
    workdir: Path,
    fetch: Callable[[str, Path], Path] | None = None,
) -> LoadedModel:
    """Load the teacher from the config's model source.

    ``model.uri`` (``models:/...`` or ``runs:/...``) is downloaded by ``fetch`` (the
    pipeline passes the MLflow tracker's downloader, so this module never imports
    mlflow) into ``workdir``; the file is then loaded like any local file, pickle rules
    and ``model.sha256`` included.
    """
    if source.path:
        p = Path(source.path).expanduser()
        return load_model_file(p if p.is_absolute() else base_dir / p, source, base_dir=base_dir)
    if source.url:
        local = download(
            source.url,
            sha256=source.sha256 or "",
            dest_dir=workdir,
            allow_http=source.allow_http,
            max_bytes=source.max_download_bytes,
        )
        return load_model_file(local, source, base_dir=base_dir)
    if source.uri and fetch is not None:
        return load_model_file(
            fetch(source.uri, workdir / "mlflow-model"), source, base_dir=base_dir
        )
    raise ConfigError(
        f"model.uri {source.uri} needs MLflow, and no tracking client is available",
        path="model.uri",
        hint="set mlflow.tracking_uri or MLFLOW_TRACKING_URI, or download the file and use model.path",
    )


# ---------------------------------------------------------------- Hugging Face folders

HF_CONFIG = "config.json"
HF_WEIGHTS = (".safetensors", ".bin")
EXPORT_SUFFIX = ".pt2"
# Noise on import (C-extension load failures of optional kernels, deprecation notes of
# torch's pytree registry): printed by loggers nobody configured, never an error here.
# transformers imports torchao when it is installed (ci-compress does not depend on it):
# torchao then logs "Failed to load ... .so" for each C extension this torch cannot load,
# and registers Enums torch's pytree logger warns about. Quiet for users who have it.
_QUIET_LOGGERS = ("torchao", "torch.utils._pytree", "transformers.modeling_utils")


def _local_path(source: ModelSource, base_dir: Path | None) -> Path | None:
    if not source.path:
        return None
    p = Path(source.path).expanduser()
    return p if p.is_absolute() or base_dir is None else base_dir / p


def _transformers() -> Any:
    """``transformers``, imported quietly, or a ConfigError saying how to install it."""
    import logging

    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    with _offline():
        try:
            import transformers
        except ImportError:
            raise ConfigError(
                "a Hugging Face model folder needs the transformers package, which is not installed",
                path="model.path",
                hint="pip install 'ci-compress[hf]'",
            ) from None
    transformers.logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    transformers.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    return transformers


class _offline:
    """``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE`` set for the block, restored after."""

    NAMES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_PROGRESS_BARS")

    def __enter__(self) -> None:
        import os

        self.saved = {k: os.environ.get(k) for k in self.NAMES}
        for k in self.NAMES:
            os.environ[k] = "1"

    def __exit__(self, *exc: object) -> None:
        import os

        for k, v in self.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _hf_class(source: ModelSource) -> tuple[Any, str]:
    transformers = _transformers()
    name = source.hf.auto_class if source.hf is not None else "AutoModel"
    cls = getattr(transformers, name, None)
    if cls is None or not hasattr(cls, "from_pretrained"):
        close = [n for n in dir(transformers) if n.startswith("AutoModel")]
        raise ConfigError(
            f"transformers has no model class {name!r}",
            path="model.hf.auto_class",
            hint=f"use an Auto class such as {', '.join(sorted(close)[:6])}, or a model class (BertModel)",
        )
    return cls, name


def load_hf_dir(path: Path, source: ModelSource) -> LoadedModel:
    """A ``save_pretrained`` folder, loaded offline with the configured class."""
    cls, name = _hf_class(source)
    weights = sorted(
        (p for p in path.iterdir() if p.is_file() and p.suffix in HF_WEIGHTS),
        key=lambda p: p.name,
    )
    if not weights:
        raise ArtifactError(
            f"the Hugging Face folder {path} holds config.json but no weights (*.safetensors, *.bin)",
            hint="save the model with model.save_pretrained(folder)",
        )
    if source.sha256:
        raise ConfigError(
            "pins one file, and a Hugging Face model is a folder",
            path="model.sha256",
            hint="remove model.sha256; report.json records the digest of the folder's weight files",
        )
    try:
        with _offline():
            module, info = cls.from_pretrained(
                str(path), local_files_only=True, output_loading_info=True
            )
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, ImportError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise ArtifactError(
            f"cannot load the Hugging Face model in {path} with transformers.{name}: {first}",
            hint="check model.hf.auto_class fits the folder's config.json (architectures), and that the folder is complete",
        ) from None
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        # transformers fills them with random values and carries on: a teacher with a
        # random head (or, for the wrong class, random everything) is not the model.
        shown = ", ".join(missing[:4]) + (
            f" and {len(missing) - 4} more" if len(missing) > 4 else ""
        )
        raise ArtifactError(
            f"the Hugging Face folder {path} has no weights for {len(missing)} tensor(s) "
            f"transformers.{name} needs ({shown}); they would be random",
            hint="save the whole model with save_pretrained, or set model.hf.auto_class to the class of config.json's architectures",
        )
    module.eval()
    _check_finite(module, path)
    digest = hashlib.sha256()
    size = 0
    for p in weights:
        digest.update(p.name.encode() + b"\0")
        digest.update(file_sha256(p).encode())
        size += p.stat().st_size
    return LoadedModel(
        module=module, path=path, file_bytes=size, sha256=digest.hexdigest(), kind="huggingface"
    )


def hf_architecture(path: Path, source: ModelSource) -> nn.Module:
    """The configured class built from ``config.json`` alone (weights to be replaced)."""
    cls, _ = _hf_class(source)
    transformers = _transformers()
    with _offline():
        config = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True)
        model = cls.from_config(config) if hasattr(cls, "from_config") else cls(config)
    return model  # type: ignore[no-any-return]


# ---------------------------------------------------------------- torch.export programs


def load_export(path: Path) -> nn.Module:
    """A ``torch.export`` program as a module (see :mod:`ci_compress.loading.exported`)."""
    from ci_compress.loading.exported import load_program

    return load_program(path)
