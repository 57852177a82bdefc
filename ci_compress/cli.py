"""The command line: parse, call the library, render, return an exit code.

``main`` is the one error boundary: a :class:`~ci_compress.errors.CICompressError`
prints ``Error: <message>`` and its hint on stderr and exits with the error's code; an
unexpected exception is a bug, written to a crash log, exit code 70. Heavy libraries
(torch, mlflow) are imported inside the commands that need them, so ``--help`` is fast.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import click

from ci_compress import __version__
from ci_compress.errors import CICompressError, ExitCode

EXIT_CODES_HELP = """\b
Exit codes:
  0   the gate passed
  1   the gate failed (the student is worse than the thresholds allow)
  2   config or usage error
  3   bad input: model artifact or data unreadable, unsafe or invalid
  4   infrastructure: MLflow or a download host unreachable or refusing
  5   inconclusive: the holdout cannot decide (reserved)
  70  internal error in ci-compress (a crash log is written)
"""


def _progress(quiet: bool) -> Any:
    start = time.perf_counter()

    def say(msg: str) -> None:
        if not quiet or msg.startswith("warning:"):
            click.echo(f"[{time.perf_counter() - start:6.1f}s] {msg}", err=True)

    return say


@click.group(epilog=EXIT_CODES_HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ci-compress")
def cli() -> None:
    """Gate merges on compressed-model quality: compress, evaluate against the original,
    gate on thresholds, record in MLflow and report."""


def _run_and_report(config_path: Path, report_dir: Path | None, quiet: bool, as_json: bool) -> int:
    from ci_compress import pipeline
    from ci_compress.config import load_config
    from ci_compress.reporting.render import terminal

    loaded = load_config(config_path)
    report = pipeline.run(loaded, report_dir=report_dir, progress=_progress(quiet))
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2, sort_keys=True))
    else:
        click.echo(terminal(report))
    return int(ExitCode.PASSED if report.passed else ExitCode.GATE_FAILED)


@cli.command()
@click.option(
    "--config",
    "-c",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default="compress.yaml",
    show_default=True,
    help="Gate config (YAML).",
)
@click.option(
    "--report-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Override report.dir.",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress lines on stderr.")
@click.option(
    "--json", "as_json", is_flag=True, help="Print report.json to stdout instead of the table."
)
def run(config_path: Path, report_dir: Path | None, quiet: bool, as_json: bool) -> int:
    """Compress, evaluate, gate, record and report, as the config says."""
    return _run_and_report(config_path, report_dir, quiet, as_json)


@cli.command()
@click.option(
    "--workdir",
    type=click.Path(path_type=Path, file_okay=False),
    default="ci-compress-demo",
    show_default=True,
    help="Where the demo model, config, report and MLflow store go.",
)
@click.option(
    "--model",
    "kind",
    type=click.Choice(["mlp", "cnn"]),
    default="mlp",
    show_default=True,
    help="Demo architecture.",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress lines on stderr.")
def demo(workdir: Path, kind: str, quiet: bool) -> int:
    """Run the whole gate on the built-in default: a model trained on digits."""
    from ci_compress.demo.train import prepare

    _progress(quiet)(f"preparing the demo {kind} in {workdir}")
    config = prepare(workdir, kind=kind)
    return _run_and_report(config, None, quiet, False)


@cli.command()
@click.option(
    "--config",
    "-c",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default="compress.yaml",
    show_default=True,
)
def validate(config_path: Path) -> int:
    """Check a config without running anything."""
    from ci_compress.config import load_config

    loaded = load_config(config_path)
    names = ", ".join(p.type for p in loaded.config.passes) or "none"
    click.echo(
        f"{config_path}: valid (passes: {names}; thresholds: {', '.join(loaded.config.thresholds.active())})"
    )
    if loaded.config.tune is not None:
        from ci_compress.tuning.space import resolve

        space = resolve(loaded, loaded.config.tune)
        click.echo(
            f"tune: {len(space.dimensions)} searched option(s), {len(space.optional)} optional pass(es)"
            + (f"; profile {space.profile} left out {len(space.skipped)} item(s)" if space.skipped else "")
        )
    return 0


@cli.command()
@click.option(
    "--config",
    "-c",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default="compress.yaml",
    show_default=True,
    help="Gate config with a tune: section (YAML).",
)
@click.option("--trials", type=int, default=None, help="Override tune.max_trials (whole study).")
@click.option("--timeout", type=float, default=None, help="Override tune.timeout_s (seconds).")
@click.option(
    "--storage", default=None, help="Override tune.storage (sqlite:///f.db, postgresql://...)."
)
@click.option("--study", "study_name", default=None, help="Override tune.study_name.")
@click.option(
    "--jobs",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Worker processes on this machine, sharing the storage.",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress lines on stderr.")
def tune(
    config_path: Path,
    trials: int | None,
    timeout: float | None,
    storage: str | None,
    study_name: str | None,
    jobs: int,
    quiet: bool,
) -> int:
    """Find the most compressed config that still passes the gate.

    Exit code 0 when a passing config was found (written to tune.output, default
    tuned.yaml), 1 when no trial passed (nothing is written).
    """
    from ci_compress.config import load_config
    from ci_compress.tuning.results import describe_passes
    from ci_compress.tuning.run import tune as run_tune

    loaded = load_config(config_path)
    result = run_tune(
        loaded,
        max_trials=trials,
        timeout_s=timeout,
        storage=storage,
        study_name=study_name,
        jobs=jobs,
        progress=_progress(quiet),
    )
    c = result.counts()
    click.echo(
        f"study {result.study_name!r}: {len(result.trials)} trials "
        f"({c.get('passed', 0)} passed, {c.get('pruned', 0)} pruned, {c.get('failed', 0)} failed)"
    )
    if result.best is None:
        click.echo("NO PASSING CONFIG: no trial passed the gate; tuned.yaml was not written.")
    else:
        m = result.best.metrics
        click.echo(
            f"best passing config: trial {result.best.number}: {describe_passes(result.best.passes)}\n"
            f"  {int(m['student.file_bytes']):,} bytes ({m['delta.compression_ratio']:.2f}x smaller), "
            f"accuracy {100 * m['student.accuracy']:.2f}% (drop {m['delta.accuracy_drop_points']:.2f} points)\n"
            f"  written to {result.tuned_path}"
        )
    click.echo(f"report: {result.report_md}  plot: {result.plot}")
    return int(ExitCode.PASSED if result.passed else ExitCode.GATE_FAILED)


@cli.command()
def schema() -> int:
    """Print the JSON Schema of the config file."""
    from ci_compress.config import json_schema

    click.echo(json.dumps(json_schema(), indent=2, sort_keys=True))
    return 0


def _crash_log(exc: BaseException) -> Path:
    fd, name = tempfile.mkstemp(prefix="ci-compress-crash-", suffix=".log")
    with os.fdopen(fd, "w") as f:
        f.write(f"ci-compress {__version__}, argv {sys.argv!r}\n")
        f.write("".join(traceback.format_exception(exc)))
    return Path(name)


def main(argv: list[str] | None = None) -> int:
    """Console entry point: the single place that maps errors to exit codes."""
    try:
        rv = cli.main(args=argv, prog_name="ci-compress", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        return 130
    except click.ClickException as e:
        e.show()
        return int(ExitCode.CONFIG)
    except click.exceptions.Exit as e:
        return int(e.exit_code)
    except CICompressError as e:
        click.echo(f"Error: {e.message}", err=True)
        if e.hint:
            click.echo(f"  hint: {e.hint}", err=True)
        return int(e.exit_code)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        return 130
    except Exception as e:
        log = _crash_log(e)
        click.echo(
            f"Error: internal error in ci-compress ({type(e).__name__}: {e}); details in {log}",
            err=True,
        )
        click.echo("  hint: this is a bug; please report it with the crash log", err=True)
        return int(ExitCode.INTERNAL)
    return int(rv or 0) if isinstance(rv, int) else 0
