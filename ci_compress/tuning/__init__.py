"""``ci-compress tune``: find the most compressed student that still passes the gate.

:mod:`~ci_compress.config.tune` is the ``tune:`` section, :mod:`~ci_compress.tuning.space`
turns it into a validated search space (and holds the target profiles),
:mod:`~ci_compress.tuning.study` runs trials with Optuna on shared storage, and
:mod:`~ci_compress.tuning.results` picks the best passing trial, the Pareto front, and
writes ``tuned.yaml``, ``pareto.png`` and ``tune-report.md``.
"""
