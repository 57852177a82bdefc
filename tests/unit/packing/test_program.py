"""Models of custom classes ship their graph (a torch.export program) and reload alone."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from ci_compress.demo.models import digits_mlp
from ci_compress.errors import ArtifactError
from ci_compress.packing.file import (
    assemble,
    load_packed,
    load_student,
    pack,
    read_manifest,
)
from ci_compress.packing.program import ExportedProgram, check_graph
from tests.helpers.programs import HOSTILE, graph_of, rewrite_graph


class Block(nn.Module):
    """A residual block with a non-persistent buffer and a plain tensor attribute."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.up = nn.Linear(width, hidden)
        self.down = nn.Linear(hidden, width)
        self.register_buffer("gain", torch.full((width,), 0.5), persistent=False)
        self.shift = torch.tensor(0.25)  # lifted by torch.export as a constant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(torch.relu(self.up(x))) * self.gain + self.shift


class Net(nn.Module):
    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.inp = nn.Linear(64, 24)
        self.block = Block(24, hidden)
        self.out = nn.Linear(24, 10)
        self.norm = nn.BatchNorm1d(24)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.block(self.norm(self.inp(x))))


def _net() -> Net:
    torch.manual_seed(0)
    model = Net().eval()
    with torch.no_grad():
        model.norm.running_mean.uniform_(-0.5, 0.5)
        model.norm.running_var.uniform_(0.5, 2.0)
    return model


def _same(a: nn.Module, b: nn.Module, *sizes: int) -> None:
    for n in sizes:
        x = torch.rand(n, 64)
        with torch.inference_mode():
            assert torch.equal(a(x), b(x)), n


def test_a_custom_model_reloads_without_a_factory_for_any_batch_size(tmp_path: Path) -> None:
    model = _net()
    info = pack(model, tmp_path / "m.ccz", example=torch.rand(4, 64))
    loaded, manifest = load_packed(tmp_path / "m.ccz")
    assert isinstance(loaded, ExportedProgram)
    _same(model, loaded, 1, 3, 17)
    assert manifest["program"]["bytes"] == info.program_raw_bytes > info.program_bytes > 0
    # the tensors stored are the program's: the buffer left out of state_dict and the
    # plain tensor attribute too, under the names the program gives them
    assert {"block.gain", "block.shift", "norm.running_mean", "inp.weight"} <= set(
        manifest["tensors"]
    )
    # the public API, with no factory and the class unknown to the loader
    _same(model, load_student(tmp_path / "m.ccz"), 5)


def test_without_the_program_the_same_file_needs_a_factory(tmp_path: Path) -> None:
    pack(_net(), tmp_path / "m.ccz")  # no example: no program, as before
    manifest, _ = read_manifest(tmp_path / "m.ccz")
    assert "program" not in manifest
    with pytest.raises(ArtifactError, match="custom module"):
        load_packed(tmp_path / "m.ccz")


def test_standard_layers_ship_no_program_and_the_same_bytes(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = digits_mlp().eval()
    a = pack(model, tmp_path / "a.ccz")
    b = pack(model, tmp_path / "b.ccz", example=torch.rand(4, 64))
    assert a.sha256 == b.sha256 and b.program_bytes == 0


def test_a_structurally_pruned_custom_model_reloads(tmp_path: Path) -> None:
    model = _net()
    # what structured pruning does: a narrower hidden layer, the next layer adjusted
    keep = torch.arange(0, 32, 2)
    up, down = model.block.up, model.block.down
    narrow_up, narrow_down = nn.Linear(24, len(keep)), nn.Linear(len(keep), 24)
    with torch.no_grad():
        narrow_up.weight.copy_(up.weight[keep])
        narrow_up.bias.copy_(up.bias[keep])
        narrow_down.weight.copy_(down.weight[:, keep])
        narrow_down.bias.copy_(down.bias)
    model.block.up, model.block.down = narrow_up, narrow_down
    pack(model, tmp_path / "p.ccz", example=torch.rand(4, 64))
    loaded = load_student(tmp_path / "p.ccz", factory=Net)  # the factory's shapes differ: unused
    _same(model, loaded, 2, 9)


def test_a_model_unpickled_with_allow_pickle_packs_and_reloads(tmp_path: Path) -> None:
    from ci_compress.config import ModelSource
    from ci_compress.loading.models import load_model_file

    model = _net()
    torch.save(model, tmp_path / "full.pt")
    source = load_model_file(tmp_path / "full.pt", ModelSource(path="full.pt", allow_pickle=True))
    pack(source.module, tmp_path / "m.ccz", example=torch.rand(4, 64))
    _same(model, load_student(tmp_path / "m.ccz"), 6)


@pytest.mark.parametrize("compile", ["script", "trace"])
def test_a_torchscript_model_packs_and_reloads_without_a_factory(
    tmp_path: Path, compile: str
) -> None:
    model = _net()
    x = torch.rand(4, 64)
    ts = torch.jit.script(model) if compile == "script" else torch.jit.trace(model, x)
    torch.jit.save(ts, str(tmp_path / "ts.pt"))
    # torch's converter turns the TorchScript graph into a program; batch size stays free
    info = pack(torch.jit.load(str(tmp_path / "ts.pt")), tmp_path / "m.ccz", example=x)
    assert info.program_bytes > 0
    _same(model, load_student(tmp_path / "m.ccz"), 9)


class Branchy(nn.Module):
    """Data-dependent control flow: torch.export cannot capture it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x)
        return y if float(y.sum()) > 0 else -y


def test_an_unexportable_model_without_a_factory_is_refused_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError) as e:
        pack(Branchy(), tmp_path / "b.ccz", example=torch.rand(4, 64))
    assert str(e.value).startswith("cannot ship the model: module <root> is of the custom class")
    assert "torch.export failed" in str(e.value) and "model.factory" in (e.value.hint or "")
    assert "\n" not in e.value.message
    assert not (tmp_path / "b.ccz").exists()


def test_an_unexportable_model_with_a_factory_ships_as_before(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Branchy().eval()
    info = pack(model, tmp_path / "b.ccz", example=torch.rand(4, 64), factory="tests:branchy")
    assert info.program_bytes == 0 and "torch.export failed" in (info.program_skipped or "")
    loaded = load_student(tmp_path / "b.ccz", factory=Branchy)
    _same(model, loaded, 4)


# ---------------------------------------------------------------- hostile graphs


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_graph_is_a_one_line_artifact_error(
    tmp_path: Path, case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    pack(_net(), tmp_path / "m.ccz", example=torch.rand(4, 64))
    edit, message = HOSTILE[case]
    rewrite_graph(tmp_path / "m.ccz", tmp_path / "bad.ccz", edit)
    with pytest.raises(ArtifactError) as e:
        load_student(tmp_path / "bad.ccz")
    assert message in e.value.message and "\n" not in e.value.message
    assert not (tmp_path / "pwned").exists()


def test_the_graph_stream_is_bounded_before_it_is_read(tmp_path: Path) -> None:
    pack(_net(), tmp_path / "m.ccz", example=torch.rand(4, 64))
    manifest, payload = read_manifest(tmp_path / "m.ccz")
    manifest["program"]["bytes"] = 2**40
    (tmp_path / "big.ccz").write_bytes(assemble(manifest, payload))
    with pytest.raises(ArtifactError, match="program.bytes is not a byte count"):
        load_student(tmp_path / "big.ccz")
    manifest["program"]["bytes"] = 1  # the streams no longer add up to raw_bytes
    (tmp_path / "off.ccz").write_bytes(assemble(manifest, payload))
    with pytest.raises(ArtifactError, match="add up to"):
        load_student(tmp_path / "off.ccz")


def test_the_loader_never_unpickles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pack(_net(), tmp_path / "m.ccz", example=torch.rand(4, 64))

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("unpickling")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    _same(_net(), load_student(tmp_path / "m.ccz"), 2)


def test_check_graph_wants_exactly_the_stored_tensors(tmp_path: Path) -> None:
    pack(_net(), tmp_path / "m.ccz", example=torch.rand(4, 64))
    manifest, _ = read_manifest(tmp_path / "m.ccz")
    graph = graph_of(tmp_path / "m.ccz")
    stored = set(manifest["tensors"])
    check_graph(graph, stored)
    with pytest.raises(ArtifactError, match="does not use: extra"):
        check_graph(graph, stored | {"extra"})


def test_the_size_breakdown_of_a_reloaded_program_names_the_packed_modules(
    tmp_path: Path,
) -> None:
    from ci_compress.packing.file import size_breakdown

    info = pack(_net(), tmp_path / "m.ccz", example=torch.rand(4, 64))
    sizes = size_breakdown(load_student(tmp_path / "m.ccz"), info)
    rows = {row["module"]: row for row in sizes["layers"]}
    assert rows["block.up"]["type"] == "Linear" and rows["block"]["type"] == "Block"
    assert rows["block.up"]["parameters"] == 24 * 32 + 32
    assert sizes["program_bytes"] == info.program_bytes > 0


@pytest.mark.slow  # 26 s on 2 shared cores
def test_minilm_ships_its_graph_and_reloads_equal_without_its_config(tmp_path: Path) -> None:
    from ci_compress.loading.models import _transformers
    from tests.helpers.real_models import minilm, tokenized

    folder = minilm()
    model = _transformers().AutoModel.from_pretrained(str(folder)).eval()
    tokens = {k: torch.from_numpy(v) for k, v in tokenized(folder, 6).items()}
    info = pack(model, tmp_path / "m.ccz", example={k: v[:4] for k, v in tokens.items()})
    # measured: 7.8 kB of zstd'd graph in a 76.7 MB fp32 file
    assert 0 < info.program_bytes < info.file_bytes / 1000
    loaded = load_student(tmp_path / "m.ccz")  # no HF folder, no factory
    with torch.inference_mode():
        want = model(**tokens).last_hidden_state
        got = loaded(**tokens).last_hidden_state  # the same ModelOutput class, 6 samples
    assert torch.equal(want, got)


def test_int8_dynamic_layers_fall_back_to_the_factory_or_say_which_scheme_exports(
    tmp_path: Path,
) -> None:
    from ci_compress.layers.int8 import int8_dynamic_linear

    model = _net()
    layer = model.block.up
    weight = layer.weight.detach()
    scale = weight.abs().amax(1) / 127
    q = torch.round(weight / scale[:, None]).to(torch.int8)
    model.block.up = int8_dynamic_linear(q, scale, layer.bias.detach())
    with pytest.raises(ArtifactError) as e:
        pack(model, tmp_path / "m.ccz", example=torch.rand(4, 64))
    assert "int8-dynamic layers (at block.up)" in e.value.message
    assert "int8-weight-only" in (e.value.hint or "")
    info = pack(model, tmp_path / "m.ccz", example=torch.rand(4, 64), rebuildable=True)
    assert info.program_bytes == 0 and "int8-dynamic" in (info.program_skipped or "")
