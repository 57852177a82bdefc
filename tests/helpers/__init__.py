"""Test helpers, imported by the tests (fixtures live in ``tests/conftest.py``).

``cli`` runs the CLI (in process, or as a real console-script process), ``configs``
writes gate configs, ``servers`` starts the MLflow server, ``tracker_contract`` is the
suite every :class:`~ci_compress.tracking.Tracker` must pass; the rest are stand-ins:
``local_http`` (a model host), ``fake_apis`` (GitHub and GitLab REST), ``faultproxy``
(a fault-injecting proxy before MLflow), ``action_harness`` (a composite action's
steps), ``bad_models`` (misbehaving model factories) and ``passes_support`` (trained
teachers and one example config per pass); ``real_models`` builds real models of each
task offline (MiniLM from its wheel, a diabetes regressor, a tiny GPT-2).
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
