"""A catalogue of bad inputs and attacks, each run through the real CLI.

Every case builds its inputs in a fresh folder (a copy of the trained demo teacher),
runs ``ci-compress run`` (in process, through the CLI's error boundary) and asserts:

* the documented exit code (README, "Exit codes" and "Error catalogue");
* exactly one ``Error: `` line on stderr, containing the expected fragment (which
  names the file or the config field);
* no "Traceback" anywhere in stdout or stderr;
* nothing was written that a later step could take for a checked student: no
  report.json, no student.ccz, no file left in the downloads folder.

The cases that need a model host use a local HTTP server on 127.0.0.1 (and an https one
with a throwaway CA from ``trustme``, trusted through ``REQUESTS_CA_BUNDLE``).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pytest
import torch
import yaml

from tests.helpers.cli import run_cli
from tests.helpers.configs import base_config, write_config
from tests.helpers.local_http import LocalServer, start
from tests.helpers.servers import free_port

FACTORY = "ci_compress.demo.models:digits_mlp"
TEACHER = "digits_mlp.safetensors"


@dataclass
class Env:
    """What a case may use: the work folder and the local servers."""

    wd: Path
    http: LocalServer
    https: LocalServer
    environ: dict[str, str] = field(default_factory=dict)


Setup = Callable[[Env], Any]  # returns a config dict, or a str (raw YAML text)


@dataclass(frozen=True)
class Case:
    id: str
    setup: Setup
    code: int
    fragment: str


# ---------------------------------------------------------------- helpers for cases


def cfg(**overrides: Any) -> Callable[[Env], dict[str, Any]]:
    return lambda env: base_config(**overrides)


def model(**fields: Any) -> dict[str, Any]:
    return {"factory": FACTORY, **fields}


def teacher_bytes(env: Env) -> bytes:
    return (env.wd / TEACHER).read_bytes()


def with_model_file(name: str, make: Callable[[Env, Path], None], **model_fields: Any) -> Setup:
    def setup(env: Env) -> dict[str, Any]:
        make(env, env.wd / name)
        fields = {"path": name, **model_fields}
        if "factory" not in model_fields:
            fields["factory"] = FACTORY
        return base_config(model={k: v for k, v in fields.items() if v is not None})

    return setup


def write(data: bytes) -> Callable[[Env, Path], None]:
    return lambda env, p: p.write_bytes(data)


def truncated_teacher(env: Env, p: Path) -> None:
    b = teacher_bytes(env)
    p.write_bytes(b[: len(b) // 2])


def tampered_safetensors(env: Env, p: Path) -> None:
    b = bytearray(teacher_bytes(env))
    b[0:8] = (1 << 40).to_bytes(8, "little")  # header length far beyond the file
    p.write_bytes(bytes(b))


def torch_state_dict(env: Env, p: Path) -> None:
    from ci_compress.demo.models import digits_mlp

    torch.save(digits_mlp().state_dict(), p)


def truncated(make: Callable[[Env, Path], None]) -> Callable[[Env, Path], None]:
    def inner(env: Env, p: Path) -> None:
        make(env, p)
        b = p.read_bytes()
        p.write_bytes(b[: len(b) // 2])

    return inner


def torchscript(env: Env, p: Path) -> None:
    from ci_compress.demo.models import digits_mlp

    torch.jit.save(torch.jit.script(digits_mlp()), str(p))


def tampered_torchscript(env: Env, p: Path) -> None:
    """Rewrite one stored tensor record of the archive with garbage (CRC no longer fits)."""
    torchscript(env, p)
    raw = bytearray(p.read_bytes())
    with zipfile.ZipFile(p) as z:
        info = next(i for i in z.infolist() if "/data/" in i.filename and i.file_size > 64)
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    for k in range(start, start + 32):
        raw[k] ^= 0xFF
    p.write_bytes(bytes(raw))


def packed(env: Env, p: Path) -> None:
    from safetensors.torch import load_file

    from ci_compress.demo.models import digits_mlp
    from ci_compress.packing.file import pack

    m = digits_mlp()
    m.load_state_dict(load_file(str(env.wd / TEACHER)))
    pack(m, p)


def packed_tampered(env: Env, p: Path) -> None:
    packed(env, p)
    b = bytearray(p.read_bytes())
    b[8 + 10] ^= 0xFF  # one byte of the compressed payload (after the 8 magic bytes)
    p.write_bytes(bytes(b))


def packed_bad_magic(env: Env, p: Path) -> None:
    packed(env, p)
    b = bytearray(p.read_bytes())
    b[0:8] = b"NOTAPACK"
    p.write_bytes(bytes(b))


class RunsCode:
    """A pickle payload: unpickling it would create the marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.marker, "w"))


def code_pickle(env: Env, p: Path) -> None:
    torch.save({"weights": RunsCode(str(env.wd / "PWNED"))}, p)


def pickled_module(env: Env, p: Path) -> None:
    from ci_compress.demo.models import digits_mlp

    torch.save(digits_mlp(), p)


def nan_weight(env: Env, p: Path) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(str(env.wd / TEACHER))
    state["0.weight"][0, 0] = float("nan")
    save_file(state, str(p))


def nan_output_model(env: Env) -> dict[str, Any]:
    from safetensors.torch import save_file

    from tests.helpers.bad_models import nan_output_model as make

    save_file(make().state_dict(), str(env.wd / "nan.safetensors"))
    return base_config(
        model={"path": "nan.safetensors", "factory": "tests.helpers.bad_models:nan_output_model"},
        passes=[{"type": "prune", "amount": 0.5}],
    )


def holdout(x: Any, y: Any, name: str = "holdout.npz", **extra: Any) -> Setup:
    def setup(env: Env) -> dict[str, Any]:
        np.savez(env.wd / name, x=x, y=y)
        return base_config(data={"holdout": {"path": name, **extra}})

    return setup


def digits() -> tuple[np.ndarray, np.ndarray]:
    from ci_compress.loading.data import digits_split

    return digits_split("test")


def bad_x(fn: Callable[[np.ndarray], np.ndarray]) -> Setup:
    def setup(env: Env) -> dict[str, Any]:
        x, y = digits()
        return holdout(fn(x.copy()), y)(env)

    return setup


def bad_y(fn: Callable[[np.ndarray], np.ndarray]) -> Setup:
    def setup(env: Env) -> dict[str, Any]:
        x, y = digits()
        return holdout(x, fn(y.copy()))(env)

    return setup


def set_nan(x: np.ndarray) -> np.ndarray:
    x[3, 5] = np.nan
    return x


def set_inf(x: np.ndarray) -> np.ndarray:
    x[7, 1] = np.inf
    return x


def label(value: int) -> Callable[[np.ndarray], np.ndarray]:
    def fn(y: np.ndarray) -> np.ndarray:
        y[0] = value
        return y

    return fn


def object_npz(env: Env) -> dict[str, Any]:
    x, y = digits()
    np.savez(env.wd / "holdout.npz", x=np.array([x, "evil"], dtype=object), y=y)
    return base_config(data={"holdout": {"path": "holdout.npz"}})


def truncated_npz(env: Env) -> dict[str, Any]:
    x, y = digits()
    np.savez(env.wd / "holdout.npz", x=x, y=y)
    raw = (env.wd / "holdout.npz").read_bytes()
    (env.wd / "holdout.npz").write_bytes(raw[: len(raw) // 3])
    return base_config(data={"holdout": {"path": "holdout.npz"}})


def npz_without_y(env: Env) -> dict[str, Any]:
    x, _ = digits()
    np.savez(env.wd / "holdout.npz", x=x, labels=np.zeros(len(x)))
    return base_config(data={"holdout": {"path": "holdout.npz"}})


def url_model(route: str, *, tls: bool = False, sha: str | None = None, **fields: Any) -> Setup:
    def setup(env: Env) -> dict[str, Any]:
        server = env.https if tls else env.http
        data = teacher_bytes(env)
        server.files["model.safetensors"] = data
        url = server.url(route)
        m = {
            "url": url,
            "sha256": sha or hashlib.sha256(data).hexdigest(),
            "factory": FACTORY,
            "allow_http": not tls,
            **fields,
        }
        return base_config(model=m)

    return setup


def https_redirect_to_http(env: Env) -> dict[str, Any]:
    data = teacher_bytes(env)
    env.http.files["model.safetensors"] = data
    target = env.http.url("/files/model.safetensors")
    url = env.https.url("/redirect/" + quote(target, safe=""))
    return base_config(
        model={"url": url, "sha256": hashlib.sha256(data).hexdigest(), "factory": FACTORY}
    )


def dead_port_url(env: Env) -> dict[str, Any]:
    return base_config(
        model={
            "url": f"http://127.0.0.1:{free_port()}/model.safetensors",
            "sha256": "0" * 64,
            "factory": FACTORY,
            "allow_http": True,
        }
    )


def mlflow_down(env: Env) -> dict[str, Any]:
    env.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    return base_config(mlflow={"enabled": True, "tracking_uri": f"http://127.0.0.1:{free_port()}"})


def missing_env_var(env: Env) -> dict[str, Any]:
    return base_config(
        mlflow={"enabled": True, "tracking_uri": "http://${CI_COMPRESS_NO_SUCH_VAR}@127.0.0.1:1"}
    )


def factory_model(name: str, **overrides: Any) -> Setup:
    """A model of ``tests.helpers.bad_models`` (saved as its own weights), pruned."""

    def setup(env: Env) -> dict[str, Any]:
        from safetensors.torch import save_file

        from tests.helpers import bad_models

        module = getattr(bad_models, name)()
        save_file(module.state_dict(), str(env.wd / f"{name}.safetensors"))
        return base_config(
            model={"path": f"{name}.safetensors", "factory": f"tests.helpers.bad_models:{name}"},
            passes=[{"type": "prune", "amount": 0.5}],
            **overrides,
        )

    return setup


def data_factory(name: str, **kwargs: Any) -> Setup:
    holdout = {"factory": f"tests.helpers.bad_models:{name}", "kwargs": kwargs}
    return cfg(data={"holdout": holdout})


def in_the_way(relative: str, *, folder: bool, **overrides: Any) -> Setup:
    """A config whose output path ``relative`` is already taken: by a folder where a
    file goes (``folder=True``), or by a file where a folder goes."""

    def setup(env: Env) -> dict[str, Any]:
        p = env.wd / relative
        p.parent.mkdir(parents=True, exist_ok=True)
        if folder:
            p.mkdir()
        else:
            p.write_text("not a folder\n")
        return base_config(**overrides)

    return setup


def yaml_text(text: str) -> Setup:
    return lambda env: text


GOOD_YAML = yaml.safe_dump(base_config(), sort_keys=False)


# ---------------------------------------------------------------- the catalogue

CASES = [
    # -- config and usage: exit 2
    Case("yaml-syntax", yaml_text("version: 1\nmodel: {path: [unclosed\n"), 2, "YAML syntax error"),
    Case("yaml-tab-indent", yaml_text("version: 1\nmodel:\n\tpath: x\n"), 2, "line 3"),
    Case("config-empty", yaml_text(""), 2, "the config is empty"),
    Case("config-is-a-list", yaml_text("- a\n- b\n"), 2, "top level must be a mapping"),
    Case(
        "unknown-top-key",
        yaml_text(GOOD_YAML.replace("thresholds:", "threshold:")),
        2,
        "did you mean 'thresholds'",
    ),
    Case(
        "unknown-threshold-key",
        cfg(thresholds={"max_acuracy_drop": 1}),
        2,
        "thresholds.max_acuracy_drop: unknown key; did you mean 'max_accuracy_drop'",
    ),
    Case(
        "unknown-pass-option",
        cfg(passes=[{"type": "prune", "amout": 0.5}]),
        2,
        "passes[0].amout: unknown key; did you mean 'amount'",
    ),
    Case(
        "wrong-type-threshold",
        cfg(thresholds={"max_accuracy_drop": "a lot"}),
        2,
        "thresholds.max_accuracy_drop",
    ),
    Case(
        "threshold-negative",
        cfg(thresholds={"max_accuracy_drop": -1}),
        2,
        "thresholds.max_accuracy_drop: must be in [0, 100], got -1",
    ),
    Case(
        "relative-threshold-over-1",
        cfg(thresholds={"max_relative_accuracy_drop": 2}),
        2,
        "thresholds.max_relative_accuracy_drop: must be in [0, 1]",
    ),
    Case("no-threshold", cfg(thresholds={}), 2, "thresholds: set at least one threshold"),
    Case(
        "confidence-out-of-range",
        cfg(thresholds={"max_accuracy_drop": 1, "decision": "confident", "confidence": 1.5}),
        2,
        "thresholds.confidence: must be in (0.5, 1)",
    ),
    Case(
        "unknown-decision-rule",
        cfg(thresholds={"max_accuracy_drop": 1, "decision": "vibes"}),
        2,
        "thresholds.decision: must be one of 'point' or 'confident'",
    ),
    Case(
        "unknown-pass",
        cfg(passes=[{"type": "prun", "amount": 0.5}]),
        2,
        "passes[0].type: unknown pass 'prun'; did you mean 'prune'",
    ),
    Case(
        "pass-amount-out-of-range",
        cfg(passes=[{"type": "prune", "amount": 1.5}]),
        2,
        "passes[0].amount: must be in [0, 1), got 1.5",
    ),
    Case(
        "prune-amount-and-threshold",
        cfg(passes=[{"type": "prune", "amount": 0.5, "threshold": 0.1}]),
        2,
        "passes[0]: give exactly one of amount or threshold",
    ),
    Case(
        "two-quantize-passes",
        cfg(passes=[{"type": "quantize"}, {"type": "quantize"}]),
        2,
        "passes[1]: passes[1] (quantize) quantizes again layers that passes[0]",
    ),
    Case(
        "prune-after-quantize",
        cfg(passes=[{"type": "quantize"}, {"type": "prune", "amount": 0.5}]),
        2,
        "passes[1]: passes[1] (prune) prunes layers that passes[0] (quantize)",
    ),
    Case(
        "include-matches-nothing",
        cfg(passes=[{"type": "prune", "amount": 0.5, "include": ["classifier"]}]),
        2,
        "passes[0].include: pattern 'classifier' matches no",
    ),
    Case(
        "bad-include-regex",
        cfg(passes=[{"type": "prune", "amount": 0.5, "include": ["re:(("]}]),
        2,
        "passes[0].include: bad regular expression",
    ),
    Case("config-version-2", cfg(version=2), 2, "version: unsupported config version 2"),
    Case(
        "model-two-sources",
        cfg(model=model(path=TEACHER, uri="models:/m@prod")),
        2,
        "model: give exactly one of path, url, uri",
    ),
    Case(
        "url-without-sha256",
        cfg(model=model(url="https://example.invalid/m.safetensors")),
        2,
        "model: url needs sha256",
    ),
    Case(
        "sha256-not-hex",
        cfg(model=model(path=TEACHER, sha256="abc")),
        2,
        "model.sha256: 'abc' is not of the expected form",
    ),
    Case(
        "factory-bad-form",
        cfg(model={"path": TEACHER, "factory": "no_colon"}),
        2,
        "model.factory: 'no_colon' is not of the expected form",
    ),
    Case(
        "factory-not-importable",
        cfg(model={"path": TEACHER, "factory": "no_such_pkg.models:f"}),
        2,
        "model.factory: cannot import 'no_such_pkg.models'",
    ),
    Case(
        "env-var-missing",
        missing_env_var,
        2,
        "mlflow.tracking_uri: environment variable CI_COMPRESS_NO_SUCH_VAR is not set",
    ),
    Case(
        "url-plain-http",
        cfg(model=model(url="http://127.0.0.1:9/m.safetensors", sha256="0" * 64)),
        2,
        "model.url: refusing plain http download",
    ),
    Case(
        "url-ftp-scheme",
        cfg(model=model(url="ftp://127.0.0.1/m.safetensors", sha256="0" * 64)),
        2,
        "model.url: unsupported URL scheme 'ftp'",
    ),
    # -- model artifacts: exit 3
    Case("model-missing", cfg(model=model(path="nope.safetensors")), 3, "model file not found:"),
    Case(
        "model-is-folder",
        lambda env: (env.wd / "dir.pt").mkdir() or base_config(model=model(path="dir.pt")),
        3,
        "model.path is a folder",
    ),
    Case(
        "safetensors-empty", with_model_file("m.safetensors", write(b"")), 3, "model file is empty:"
    ),
    Case(
        "safetensors-truncated",
        with_model_file("m.safetensors", truncated_teacher),
        3,
        "m.safetensors is not a readable safetensors file",
    ),
    Case(
        "safetensors-wrong-format",
        with_model_file("m.safetensors", write(b"this is a text file\n")),
        3,
        "m.safetensors is not a readable safetensors file",
    ),
    Case(
        "safetensors-tampered-header",
        with_model_file("m.safetensors", tampered_safetensors),
        3,
        "m.safetensors is not a readable safetensors file",
    ),
    Case(
        "sha256-mismatch-local",
        with_model_file(
            "m.safetensors", lambda env, p: shutil.copy(env.wd / TEACHER, p), sha256="0" * 64
        ),
        3,
        "model.sha256 expects 0000",
    ),
    Case(
        "pt-garbage",
        with_model_file("m.pt", write(b"hello, this is not a checkpoint")),
        3,
        "m.pt is not a model file ci-compress can read",
    ),
    Case(
        "pt-truncated",
        with_model_file("m.pt", truncated(torch_state_dict)),
        3,
        "m.pt is not a model file ci-compress can read",
    ),
    Case(
        "torchscript-truncated",
        with_model_file("m.pt", truncated(torchscript)),
        3,
        "m.pt is not a model file ci-compress can read",
    ),
    Case(
        "torchscript-tampered",
        with_model_file("m.pt", tampered_torchscript),
        3,
        "m.pt is corrupt or was tampered with: the checksum of",
    ),
    Case("ccz-truncated", with_model_file("m.ccz", truncated(packed)), 3, "m.ccz is truncated"),
    Case(
        "ccz-tampered-payload",
        with_model_file("m.ccz", packed_tampered),
        3,
        "m.ccz: payload sha256 does not match the manifest",
    ),
    Case(
        "ccz-bad-magic",
        with_model_file("m.ccz", packed_bad_magic),
        3,
        "m.ccz is not a ci-compress packed file (bad magic bytes)",
    ),
    Case(
        "pickle-that-runs-code",
        with_model_file("m.pt", code_pickle),
        3,
        "m.pt is a pickle that needs arbitrary code to load (it references io.open); refused",
    ),
    Case(
        "pickled-module",
        with_model_file("m.pt", pickled_module, factory=None),
        3,
        "m.pt is a pickle that needs arbitrary code to load (it references torch.nn.modules.container.Sequential); refused",
    ),
    Case(
        "state-dict-does-not-fit",
        with_model_file(
            "m.safetensors",
            lambda env, p: shutil.copy(env.wd / TEACHER, p),
            factory_kwargs={"hidden": [32]},
        ),
        3,
        "the state_dict in",
    ),
    Case(
        "state-dict-without-factory",
        cfg(model={"path": TEACHER}),
        3,
        "is a state_dict: ci-compress needs the architecture",
    ),
    Case("model-nan-weight", with_model_file("m.safetensors", nan_weight), 3, "the model in"),
    Case(
        "model-outputs-nan",
        nan_output_model,
        3,
        "the teacher model produced NaN or infinite outputs on data.holdout",
    ),
    # -- holdout data: exit 3
    Case(
        "data-missing",
        cfg(data={"holdout": {"path": "nope.npz"}}),
        3,
        "data.holdout.path: file not found",
    ),
    Case(
        "data-unsupported-suffix",
        lambda env: (
            (env.wd / "h.csv").write_text("1,2\n")
            and base_config(data={"holdout": {"path": "h.csv"}})
        ),
        3,
        "data.holdout.path: unsupported data file h.csv",
    ),
    Case(
        "data-wrong-shape",
        bad_x(lambda x: x[:, :32]),
        3,
        "the teacher model failed on data.holdout",
    ),
    Case(
        "data-int-dtype",  # integer inputs are data; the model refuses them, at load
        bad_x(lambda x: (x * 16).astype(np.int64)),
        3,
        "the teacher model failed on data.holdout: mat1 and mat2 must have the same dtype",
    ),
    Case("data-nan", bad_x(set_nan), 3, "data.holdout: x contains 1 NaN or infinite values"),
    Case("data-inf", bad_x(set_inf), 3, "data.holdout: x contains 1 NaN or infinite values"),
    Case(
        "data-empty",
        holdout(np.zeros((0, 64), np.float32), np.zeros(0, np.int64)),
        3,
        "data.holdout: holdout.npz is empty (0 samples)",
    ),
    Case(
        "data-label-out-of-range",
        bad_y(label(10)),
        3,
        "data.holdout: label 10 is out of range for a model with 10 outputs",
    ),
    Case(
        "data-negative-label", bad_y(label(-1)), 3, "data.holdout: y contains negative labels (-1)"
    ),
    Case(
        "data-float-labels",
        bad_y(lambda y: y.astype(np.float32)),
        3,
        "data.holdout: y has dtype torch.float32, expected integer class labels",
    ),
    Case("data-y-2d", bad_y(lambda y: y.reshape(-1, 1)), 3, "data.holdout: y has shape"),
    Case(
        "data-length-mismatch",
        bad_y(lambda y: y[:-5]),
        3,
        "data.holdout: x has 540 samples but y has 535",
    ),
    Case(
        "data-npz-without-y",
        npz_without_y,
        3,
        "data.holdout.path: holdout.npz must hold arrays 'x' and 'y'",
    ),
    Case(
        "data-npz-pickle",
        object_npz,
        3,
        "data.holdout.path: holdout.npz is not a readable .npz file without pickles",
    ),
    Case(
        "data-npz-truncated",  # zipfile's BadZipFile: was exit 70 (found by the fuzz test)
        truncated_npz,
        3,
        "data.holdout.path: holdout.npz is not a readable .npz file without pickles (File is not a zip file)",
    ),
    # -- downloads (local servers): exit 3 or 4
    Case(
        "url-sha256-mismatch",
        url_model("/files/model.safetensors", sha="1" * 64),
        3,
        "model.sha256 expects 1111",
    ),
    Case("url-404", url_model("/files/missing.safetensors"), 3, "failed: HTTP 404"),
    Case(
        "url-500-after-retries", url_model("/status/500/model.safetensors"), 4, "failed: HTTP 500"
    ),
    Case(
        "url-oversized",
        url_model("/files/model.safetensors", max_download_bytes=1000),
        3,
        "over model.max_download_bytes (1000); refused",
    ),
    Case(
        "url-oversized-no-length",
        url_model("/nolength/model.safetensors", max_download_bytes=1000),
        3,
        "larger than model.max_download_bytes (1000); stopped",
    ),
    Case(
        "url-length-lies-short",
        url_model("/shortlength/model.safetensors"),
        3,
        "model.sha256 expects",
    ),
    Case("url-length-lies-long", url_model("/longlength/model.safetensors"), 4, "broke off"),
    Case("url-redirect-loop", url_model("/loop"), 3, "redirected more than 5 times"),
    Case("url-unreachable", dead_port_url, 4, "cannot download http://127.0.0.1:"),
    Case("url-https-redirects-to-http", https_redirect_to_http, 3, "was redirected to plain http"),
    # -- infrastructure: exit 4
    Case("mlflow-unreachable", mlflow_down, 4, "MLflow at http://127.0.0.1:"),
    # -- a model whose forward raises anything: exit 3 naming the model (was exit 70)
    Case(
        "model-forward-assert",
        factory_model("assert_model"),
        3,
        "the teacher model failed on data.holdout: AssertionError: expected 3 channels",
    ),
    Case(
        "model-forward-zero-division",
        factory_model("zero_division_model"),
        3,
        "the teacher model failed on data.holdout: ZeroDivisionError: division by zero",
    ),
    Case(
        "model-forward-key-error",
        factory_model("key_error_model"),
        3,
        "the teacher model failed on data.holdout: 'pixel_values'",
    ),
    Case(
        "model-forward-stop-iteration",
        factory_model("stop_iteration_model"),
        3,
        "the teacher model failed on data.holdout: StopIteration",
    ),
    Case(
        "model-forward-own-exception",
        factory_model("custom_error_model"),
        3,
        "the teacher model failed on data.holdout: ModelBug: the weights were never initialised",
    ),
    Case(
        "model-forward-empty-message",
        factory_model("empty_message_model"),
        3,
        "the teacher model failed on data.holdout: LookupError",
    ),
    Case(
        "model-forward-asserts-mid-evaluation",  # after the student shipped: it is removed
        factory_model("late_assert_model"),
        3,
        "model failed on data.holdout: AssertionError: batch statistics drifted",
    ),
    # -- a data factory that fails part-way: exit 3 naming the source (was exit 70)
    Case(
        "data-factory-value-error-mid-stream",
        data_factory("fails_mid_stream", exc="ValueError"),
        3,
        "data.holdout: the factory tests.helpers.bad_models:fails_mid_stream raised ValueError at batch 2: connection reset",
    ),
    Case(
        "data-factory-os-error-mid-stream",
        data_factory("fails_mid_stream", exc="OSError"),
        3,
        "raised OSError at batch 2: Input/output error",
    ),
    Case(
        "data-factory-connection-error-mid-stream",
        data_factory("fails_mid_stream", exc="ConnectionError"),
        3,
        "raised ConnectionError at batch 2",
    ),
    Case(
        "data-factory-assert-mid-stream",
        data_factory("fails_mid_stream", exc="AssertionError"),
        3,
        "raised AssertionError at batch 2",
    ),
    Case(
        "data-factory-key-error-first-batch",
        data_factory("fails_mid_stream", exc="KeyError", at=0),
        3,
        "raised KeyError at batch 0: 'label'",
    ),
    Case(
        "data-factory-yields-strings",
        data_factory("yields_strings"),
        3,
        "data.holdout batch 0",
    ),
    # -- a report folder that cannot be written: exit 3 naming the path (was exit 70)
    Case(
        "report-dir-is-a-file",
        in_the_way("out", folder=False, report={"dir": "out"}),
        3,
        "cannot create the folder",
    ),
    Case(
        "report-dir-under-a-file",
        in_the_way("out", folder=False, report={"dir": "out/sub"}),
        3,
        "out/sub: Not a directory",
    ),
    Case(
        "student-path-is-a-folder",
        in_the_way("report/student.ccz", folder=True),
        3,
        "cannot write",
    ),
    Case(
        "report-json-path-is-a-folder",
        in_the_way("report/report.json", folder=True),
        3,
        "report/report.json: Is a directory",
    ),
    Case(
        "junit-path-is-a-folder",  # report.json and report.md were written: removed again
        in_the_way("report/junit.xml", folder=True),
        3,
        "report/junit.xml: Is a directory",
    ),
    Case(
        "chart-path-is-a-folder",  # after the student shipped and explain ran: removed
        in_the_way("report/sensitivity.png", folder=True, explain={"when": "always"}),
        3,
        "report/sensitivity.png: Is a directory",
    ),
]


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalServer, LocalServer]]:
    http = start()
    https = start(tls_dir=tmp_path_factory.mktemp("tls"))
    try:
        yield http, https
    finally:
        http.stop()
        https.stop()


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1, stderr
    return lines[0]


def assert_nothing_left(report: Path) -> None:
    """No file a later step could take for a checked result (a folder a case put in the
    way stays: it is not ours)."""
    from ci_compress.pipeline import outputs

    left = [p.name for p in outputs(report, "student.ccz") if p.is_file()]
    assert not left, left


def test_the_catalogue_is_large_and_ids_are_unique() -> None:
    from tests.e2e.test_fuzz_inputs import FUZZ

    assert len(CASES) >= 90
    assert len({c.id for c in CASES}) == len(CASES)
    # issue 16: at least 150 hostile inputs, none an exit 70 (the fuzz cases count)
    assert len(CASES) + len(FUZZ) >= 150


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, workdir: Path, servers: tuple[LocalServer, LocalServer]) -> None:
    http, https = servers
    assert https.ca_path is not None
    env = Env(
        wd=workdir, http=http, https=https, environ={"REQUESTS_CA_BUNDLE": str(https.ca_path)}
    )
    made = case.setup(env)
    if isinstance(made, str):
        path = workdir / "compress.yaml"
        path.write_text(made)
    else:
        path = write_config(workdir, made)
    proc = run_cli("run", "--config", str(path), "--quiet", cwd=workdir, env=env.environ)
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out, out
    assert proc.returncode == case.code, out
    line = one_error_line(proc.stderr)
    assert case.fragment in line, line
    assert_nothing_left(workdir / "report")
    downloads = workdir / "report" / "downloads"
    assert not downloads.exists() or not any(downloads.iterdir()), list(downloads.iterdir())


@pytest.mark.slow
def test_pickle_payload_never_runs(workdir: Path) -> None:
    """The refused pickle would create PWNED if it were ever unpickled."""
    env = Env(wd=workdir, http=None, https=None)  # type: ignore[arg-type]
    path = write_config(workdir, with_model_file("m.pt", code_pickle)(env))
    # The payload is real: unpickling it without the safety net creates the marker.
    probe = workdir / "probe"
    probe.mkdir()
    torch.save({"weights": RunsCode(str(probe / "PWNED"))}, probe / "p.pt")
    torch.load(probe / "p.pt", weights_only=False)
    assert (probe / "PWNED").exists()
    proc = run_cli("run", "--config", str(path), "--quiet", cwd=workdir)
    assert proc.returncode == 3 and "refused" in one_error_line(proc.stderr)
    assert not (workdir / "PWNED").exists()


@pytest.mark.slow
def test_https_download_with_a_trusted_ca_passes(
    workdir: Path, servers: tuple[LocalServer, LocalServer]
) -> None:
    """The positive control for the https cases: the same server and CA do work."""
    _, https = servers
    env = Env(wd=workdir, http=None, https=https)  # type: ignore[arg-type]
    path = write_config(workdir, url_model("/files/model.safetensors", tls=True)(env))
    proc = run_cli(
        "run",
        "--config",
        str(path),
        "--quiet",
        "--json",
        cwd=workdir,
        env={"REQUESTS_CA_BUNDLE": str(https.ca_path)},
    )
    assert proc.returncode == 0, proc.stderr
    assert (
        json.loads(proc.stdout)["teacher"]["sha256"]
        == hashlib.sha256(teacher_bytes(env)).hexdigest()
    )
