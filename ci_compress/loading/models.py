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
"""

from __future__ import annotations

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
    kind: str  # torchscript | state_dict | packed | pickle


def model_factory(source: ModelSource) -> Callable[[], nn.Module] | None:
    if not source.factory:
        return None
    fn = import_factory(source.factory, path="model.factory")
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


def load_model_file(path: Path, source: ModelSource) -> LoadedModel:
    """Load a local model file as an eager ``nn.Module`` in eval mode."""
    import torch

    if not path.exists():
        raise ArtifactError(
            f"model file not found: {path}",
            hint="check model.path (relative paths are relative to the config file)",
        )
    if path.is_dir():
        raise ArtifactError(f"model.path is a folder, not a file: {path}")
    size = path.stat().st_size
    if size == 0:
        raise ArtifactError(f"model file is empty: {path}")
    digest = file_sha256(path)
    if source.sha256 and digest.lower() != source.sha256.lower():
        raise ArtifactError(
            f"sha256 of {path} is {digest}, model.sha256 expects {source.sha256}",
            hint="the file changed: re-pin model.sha256 only if the new file is trusted",
        )
    factory = model_factory(source)
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
        return load_model_file(p if p.is_absolute() else base_dir / p, source)
    if source.url:
        local = download(
            source.url,
            sha256=source.sha256 or "",
            dest_dir=workdir,
            allow_http=source.allow_http,
            max_bytes=source.max_download_bytes,
        )
        return load_model_file(local, source)
    if source.uri and fetch is not None:
        return load_model_file(fetch(source.uri, workdir / "mlflow-model"), source)
    raise ConfigError(
        f"model.uri {source.uri} needs MLflow, and no tracking client is available",
        path="model.uri",
        hint="set mlflow.tracking_uri or MLFLOW_TRACKING_URI, or download the file and use model.path",
    )
