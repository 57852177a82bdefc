"""Students of custom classes ship their graph: ``ci-compress run`` passes and the shipped
file reloads with ``ci_compress.load_student`` alone, in a process that cannot import
their class (issue 20: a distilled student of another class failed at reload, exit 3).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.helpers import REPO
from tests.helpers.cli import run_cli
from tests.helpers.configs import base_config, write_config

STUDENT = '''
import torch
from torch import nn


class Student(nn.Module):
    """Not the teacher's class (an nn.Sequential), and no codec knows it."""

    def __init__(self):
        super().__init__()
        self.features = nn.Linear(64, 48)
        self.head = nn.Linear(48, 10)

    def forward(self, x):
        return self.head(torch.relu(self.features(x)) + 0.1 * x[:, :48])


def student():
    return Student()
'''

RELOAD = """
import sys, torch, numpy as np
import ci_compress
from sklearn.datasets import load_digits
model = ci_compress.load_student(sys.argv[1])
x, y = load_digits(return_X_y=True)
x = torch.tensor(x[:300] / 16.0, dtype=torch.float32)
with torch.inference_mode():
    pred = model(x).argmax(-1).numpy()
assert "students" not in sys.modules
print(type(model).__name__, float((pred == y[:300]).mean()))
"""


@pytest.mark.slow
def test_a_distilled_student_of_another_class_ships_and_reloads_alone(workdir: Path) -> None:
    (workdir / "students.py").write_text(textwrap.dedent(STUDENT))
    config = base_config(
        data={
            "holdout": {"builtin": "digits", "split": "test"},
            "train": {"builtin": "digits", "split": "train"},
        },
        passes=[
            {"type": "distill", "student_factory": "students:student", "epochs": 3},
        ],
        thresholds={"max_accuracy_drop": 50.0},
    )
    path = write_config(workdir, config)
    proc = run_cli("run", "--config", str(path), "--quiet", cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((workdir / "report" / "report.json").read_text())
    sizes = report["size"]
    assert 0 < sizes["program_bytes"] < sizes["file_bytes"]
    shipped = workdir / "report" / "student.ccz"
    other = workdir / "elsewhere"
    other.mkdir()
    done = subprocess.run(
        [sys.executable, "-c", RELOAD, str(shipped)],
        cwd=other,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    kind, accuracy = done.stdout.split()
    assert kind == "ExportedProgram"
    # the gate's own figure for the reloaded student, within what 300 samples allow
    assert abs(float(accuracy) - report["student"]["metrics"]["accuracy"]) < 0.1
