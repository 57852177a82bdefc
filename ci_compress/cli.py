"""The command line: parse, call the library, render, return an exit code.

The one error boundary is :meth:`BoundaryGroup.main`, the entry of the ``cli`` group
itself: a :class:`~ci_compress.errors.CICompressError` prints ``Error: <message>`` and
its hint on stderr and exits with the error's code; an unexpected exception is a bug,
written to a crash log, exit code 70. Because the boundary is inside the group, the
console script (:func:`main`) and ``click.testing.CliRunner().invoke(cli, args)`` give
the same exit codes and the same stderr, so tests run the CLI in process (milliseconds)
and keep subprocesses for what only a real process shows (signals, a terminal, imports).
Heavy libraries (torch, mlflow) are imported inside the commands that need them, so
``--help`` is fast.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click

from ci_compress import __version__
from ci_compress.errors import DISK_FULL_ERRNOS, CICompressError, ExitCode, os_error

EXIT_CODES_HELP = """\b
Exit codes:
  0   the gate passed
  1   the gate failed (the student is worse than the thresholds allow)
  2   config or usage error
  3   bad input: model artifact or data unreadable, unsafe or invalid
  4   infrastructure: MLflow or a download host unreachable or refusing
  5   inconclusive: too noisy to decide (thresholds.decision: confident, an
      interval straddles a limit, with thresholds.inconclusive: fail)
  6   passed with warnings, with `report ... --fail-on warn`
  7   passed, registered, not promoted: another gate moved the alias after
      this one compared itself with the champion (re-run to compare anew)
  70  internal error: a bug in ci-compress (a crash log is written)
  130 interrupted (Ctrl-C, SIGTERM); nothing the run wrote is left behind
"""


FAST_HOLDOUT_LIMIT = 200
F = TypeVar("F", bound=Callable[..., Any])


def _config_option(help: str = "Gate config (YAML).") -> Callable[[F], F]:
    """The ``--config/-c`` option every config-reading command takes."""
    return click.option(
        "--config",
        "-c",
        "config_path",
        type=click.Path(path_type=Path, dir_okay=False),
        default="compress.yaml",
        show_default=True,
        help=help,
    )


_quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress lines on stderr.")


def _progress(quiet: bool) -> Any:
    """Progress lines on stderr: a bar on a terminal, plain periodic lines in CI logs."""
    from ci_compress.progress import Progress

    return Progress(quiet=quiet)


class BoundaryGroup(click.Group):
    """The root group, holding the one error boundary in :meth:`main`.

    click's own standalone mode would print ``Aborted!``, exit 1 for every
    ``ClickException`` and drop a command's returned exit code; this runs the group in
    non-standalone mode inside :func:`_boundary` and then behaves like a standalone
    command: ``sys.exit(code)``, or ``return code`` with ``standalone_mode=False``.
    ``CliRunner.invoke`` calls this ``main`` in standalone mode, so it sees the same
    exit code and stderr as the console script.
    """

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> int:
        argv = list(sys.argv[1:] if args is None else args)

        def invoke() -> Any:
            return click.Group.main(
                self, argv, prog_name, complete_var, standalone_mode=False, **extra
            )

        code = _boundary(invoke, argv)
        if standalone_mode:
            sys.exit(code)
        return code


@click.group(
    name="ci-compress",
    cls=BoundaryGroup,
    epilog=EXIT_CODES_HELP,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.version_option(__version__, prog_name="ci-compress")
def cli() -> None:
    """Gate merges on compressed-model quality: compress, evaluate against the original,
    gate on thresholds, record in MLflow and report."""


def _sigterm_as_interrupt() -> None:
    """CI cancels a job with SIGTERM: raise so the pipeline marks the run FAILED."""
    import signal

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def _run_and_report(
    config_path: Path,
    report_dir: Path | None,
    quiet: bool,
    as_json: bool,
    overrides: dict[str, Any] | None = None,
    promote: bool = False,
) -> int:
    from ci_compress import pipeline
    from ci_compress.config import load_config, with_overrides
    from ci_compress.redaction import redact
    from ci_compress.reporting.render import report_json, terminal

    loaded = load_config(config_path)
    if overrides:
        loaded = with_overrides(loaded, **overrides)
    _sigterm_as_interrupt()
    progress = _progress(quiet)
    report = pipeline.run(
        loaded,
        report_dir=report_dir,
        progress=progress,
        warn=progress.warning,
        promote=promote,
    )
    if as_json:
        click.echo(report_json(report), nl=False)
    else:
        click.echo(redact(terminal(report)))
    return report.exit_code


@cli.command()
@_config_option()
@click.option(
    "--report-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Override report.dir.",
)
@_quiet_option
@click.option(
    "--json", "as_json", is_flag=True, help="Print report.json to stdout instead of the table."
)
@click.option(
    "--holdout-limit",
    type=click.IntRange(min=1),
    default=None,
    help="Override data.holdout.limit: evaluate on the first N samples only.",
)
@click.option("--no-mlflow", is_flag=True, help="Do not record in MLflow (mlflow.enabled: false).")
@click.option(
    "--fast",
    is_flag=True,
    help=f"A quick local check (pre-push): --no-mlflow, --holdout-limit {FAST_HOLDOUT_LIMIT} unless given, 3 latency repeats.",
)
@click.option(
    "--promote",
    is_flag=True,
    help="Move mlflow.alias to the new version if the gate passes (a local run; CI promotes on the default branch by itself; refused in a PR/MR build).",
)
def run(
    config_path: Path,
    report_dir: Path | None,
    quiet: bool,
    as_json: bool,
    holdout_limit: int | None,
    no_mlflow: bool,
    fast: bool,
    promote: bool,
) -> int:
    """Compress, evaluate, gate, record and report, as the config says.

    Writes report.json, report.md and junit.xml (one test case per threshold) into the
    report folder.
    """
    overrides: dict[str, Any] = {}
    if fast:
        overrides.update(
            holdout_limit=FAST_HOLDOUT_LIMIT,
            mlflow_enabled=False,
            latency_repeats=3,
            latency_warmup=1,
        )
    if holdout_limit is not None:
        overrides["holdout_limit"] = holdout_limit
    if no_mlflow:
        overrides["mlflow_enabled"] = False
    return _run_and_report(config_path, report_dir, quiet, as_json, overrides, promote)


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
@_quiet_option
def demo(workdir: Path, kind: str, quiet: bool) -> int:
    """Run the whole gate on the built-in default: a model trained on digits."""
    from ci_compress.demo.train import prepare

    _progress(quiet)(f"preparing the demo {kind} in {workdir}")
    config = prepare(workdir, kind=kind)
    return _run_and_report(config, None, quiet, False)


@cli.command()
@_config_option()
def validate(config_path: Path) -> int:
    """Check a config without running anything.

    Beyond the file itself: every factory reference imports (the config's folder is
    importable), each pass finds the data it reads (data.train, data.calibration), and
    runtime.device exists here. No model or data is loaded.
    """
    from ci_compress.config import load_config
    from ci_compress.stages import check

    loaded = load_config(config_path)
    check(loaded)
    names = ", ".join(p.type for p in loaded.config.passes) or "none"
    click.echo(
        f"{config_path}: valid (passes: {names}; thresholds: {', '.join(loaded.config.thresholds.active())})"
    )
    if loaded.config.tune is not None:
        from ci_compress.tuning.space import resolve

        space = resolve(loaded, loaded.config.tune)
        click.echo(
            f"tune: {len(space.dimensions)} searched option(s), {len(space.optional)} optional pass(es)"
            + (
                f"; profile {space.profile} left out {len(space.skipped)} item(s)"
                if space.skipped
                else ""
            )
        )
    return 0


@cli.command()
@_config_option()
@click.option(
    "--report-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Override report.dir (explain.json, explain.md, sensitivity.png go there).",
)
@_quiet_option
@click.option(
    "--json", "as_json", is_flag=True, help="Print explain.json to stdout instead of the table."
)
def explain(config_path: Path, report_dir: Path | None, quiet: bool, as_json: bool) -> int:
    """Per-layer sensitivity: which layer costs the accuracy, and what to exclude.

    Compresses one layer at a time with the configured passes, ranks layers by the
    accuracy drop each causes (another task: how much worse its primary metric gets,
    e.g. mae, nll), and searches (with real runs) the shortest exclude list of the most
    sensitive layers that meets the accuracy (or thresholds.metrics) limits. Exit 0 when the
    analysis ran, whatever it found. With MLflow enabled it is recorded as its own run
    (tag ci_compress.kind=explain).
    """
    from ci_compress import explain as explain_mod
    from ci_compress.config import load_config
    from ci_compress.reporting.explain import terminal_table

    loaded = load_config(config_path)
    out_dir = report_dir or loaded.resolve(loaded.config.report.dir)
    say = _progress(quiet)
    result = explain_mod.explain(loaded, report_dir=out_dir, progress=say)
    paths = explain_mod.write_outputs(result, out_dir)
    run_id = explain_mod.record(loaded, result, paths, progress=say)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2, sort_keys=True))
    else:
        click.echo(terminal_table(result.to_dict()))
        click.echo(f"  chart: {paths['sensitivity_png']}")
        if run_id:
            click.echo(f"  mlflow run: {run_id}")
    return 0


@cli.command()
@click.argument("target")
@click.option(
    "--tracking-uri",
    default=None,
    help="MLflow tracking URI for a run id (default: $MLFLOW_TRACKING_URI).",
)
@click.option(
    "--workdir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Fresh, empty directory for the re-run (default: a new temporary directory).",
)
@click.option(
    "--base-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Folder the config's relative paths refer to (default: the original config's folder).",
)
@_quiet_option
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
def reproduce(
    target: str,
    tracking_uri: str | None,
    workdir: Path | None,
    base_dir: Path | None,
    quiet: bool,
    as_json: bool,
) -> int:
    """Re-run a recorded gate and compare: TARGET is a report.json (or manifest.json,
    or a report folder) or an MLflow run id.

    Exit 0 when every digest and deterministic measurement matches exactly (latency is
    excluded), 1 when something differs (each difference is listed).
    """
    from ci_compress import reproduce as rep
    from ci_compress.reproducibility import read_reproducibility_manifest

    with tempfile.TemporaryDirectory(prefix="ci-compress-fetch-") as tmp:
        path, source = rep.locate(
            target, tracking_uri=tracking_uri, environ=os.environ, dest=Path(tmp)
        )
        manifest = read_reproducibility_manifest(path)
    result = rep.reproduce(
        manifest, workdir=workdir, base_dir=base_dir, source=source, progress=_progress(quiet)
    )
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2, sort_keys=True, default=str))
    else:
        click.echo(rep.render(result))
    return int(ExitCode.PASSED if result.matched else ExitCode.GATE_FAILED)


@cli.command()
@_config_option("Gate config with a tune: section (YAML).")
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
@_quiet_option
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
        f"({c.get('passed', 0)} passed, {c.get('pruned', 0)} pruned, {c.get('failed', 0)} failed"
        + (f", {c['skipped']} skipped as invalid combinations" if c.get("skipped") else "")
        + ")"
    )
    if result.best is None:
        click.echo("NO PASSING CONFIG: no trial passed the gate; tuned.yaml was not written.")
    else:
        m = result.best.metrics
        click.echo(
            f"best passing config: trial {result.best.number}: {result.best.describe()}\n"
            f"  {int(m['student.file_bytes']):,} bytes ({m['delta.compression_ratio']:.2f}x smaller), "
            f"{result.quality.describe(m)}\n"
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


# ---------------------------------------------------------------- CI renderers

_REPORT_OPTION = click.option(
    "--report",
    "report_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default="ci-compress-report/report.json",
    show_default=True,
    help="The report.json written by `ci-compress run`.",
)
_FAIL_ON_OPTION = click.option(
    "--fail-on",
    type=click.Choice(["fail", "warn", "never"]),
    default="fail",
    show_default=True,
    help="Exit non-zero when the gate failed (fail), also when it passed with warnings (warn: exit 6), or never.",
)


@cli.group()
def report() -> None:
    """Render a report.json into a CI platform's own channels (no gating here)."""


@report.command("github")
@_REPORT_OPTION
@_FAIL_ON_OPTION
@click.option(
    "--comment/--no-comment",
    default=True,
    show_default=True,
    help="Create or update one PR comment (pull_request events, needs GITHUB_TOKEN).",
)
@click.option(
    "--comment-key",
    default="default",
    show_default=True,
    help="Tells this gate's comment apart when one PR runs several gates.",
)
@click.option(
    "--comment-author",
    default=None,
    help="Login that owns the comment (default: the token's own login, or github-actions[bot]).",
)
@click.option(
    "--config-file",
    default=None,
    help="Config path to attach the ::error annotations to.",
)
@click.option(
    "--pr-number",
    type=click.IntRange(min=1),
    default=None,
    help="PR to comment on (default: from the event: pull_request, or the PR of a workflow_run).",
)
def report_github(
    report_path: Path,
    fail_on: str,
    comment: bool,
    comment_key: str,
    comment_author: str | None,
    config_file: str | None,
    pr_number: int | None,
) -> int:
    """Job summary, step outputs, ::error annotations and one sticky PR comment."""
    from ci_compress.ci import github
    from ci_compress.ci.common import load_report

    # Under workflow_run the report is a fork's artifact: render from its data, escaped.
    rep = load_report(report_path, untrusted=github.is_workflow_run(os.environ))
    return github.publish(
        rep,
        report_path=report_path,
        environ=os.environ,
        fail_on=fail_on,
        comment=comment,
        comment_key=comment_key,
        comment_author=comment_author,
        config_file=config_file,
        pr_number=pr_number,
        echo=click.echo,
    )


@report.command("gitlab")
@_REPORT_OPTION
@_FAIL_ON_OPTION
@click.option(
    "--dotenv",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Write <PREFIX>* variables here (artifacts:reports:dotenv).",
)
@click.option(
    "--dotenv-prefix",
    default="CI_COMPRESS_",
    show_default=True,
    help="Prefix of the dotenv variables; a job name (gate-int8) becomes GATE_INT8_.",
)
@click.option(
    "--note/--no-note",
    default=True,
    show_default=True,
    help="Create or update one MR note (merge request pipelines, needs a token variable).",
)
@click.option("--note-key", default="default", show_default=True)
@click.option(
    "--token-variable",
    default="CI_COMPRESS_GITLAB_TOKEN",
    show_default=True,
    help="Variable holding a project access token (api scope); CI_JOB_TOKEN cannot write notes.",
)
def report_gitlab(
    report_path: Path,
    fail_on: str,
    dotenv: Path | None,
    dotenv_prefix: str,
    note: bool,
    note_key: str,
    token_variable: str,
) -> int:
    """dotenv outputs and one sticky merge-request note."""
    from ci_compress.ci import gitlab
    from ci_compress.ci.common import load_report

    rep = load_report(report_path)
    return gitlab.publish(
        rep,
        report_path=report_path,
        environ=os.environ,
        fail_on=fail_on,
        dotenv=dotenv,
        dotenv_prefix=gitlab.dotenv_prefix(dotenv_prefix),
        note=note,
        note_key=note_key,
        token_variable=token_variable,
        echo=click.echo,
    )


@report.command("jenkins")
@_REPORT_OPTION
@_FAIL_ON_OPTION
@click.option(
    "--description-file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Write a one-line build description here (for currentBuild.description).",
)
@click.option(
    "--report-url",
    default=None,
    help="URL of the archived report.md, linked from the description ($BUILD_URL/artifact/...).",
)
def report_jenkins(
    report_path: Path, fail_on: str, description_file: Path | None, report_url: str | None
) -> int:
    """Build description and the exit code ciCompress.groovy maps to SUCCESS/UNSTABLE/FAILURE."""
    from ci_compress.ci import jenkins
    from ci_compress.ci.common import load_report

    rep = load_report(report_path)
    return jenkins.publish(
        rep,
        fail_on=fail_on,
        description_file=description_file,
        report_url=report_url,
        echo=click.echo,
    )


@cli.command()
@click.option(
    "--provider",
    type=click.Choice(["github", "gitlab", "jenkins", "pre-commit"]),
    required=True,
    help="Which CI file to write beside compress.yaml.",
)
@click.option(
    "--dir",
    "target",
    type=click.Path(path_type=Path, file_okay=False),
    default=".",
    show_default=True,
    help="Repository root to write into.",
)
@click.option("--force", is_flag=True, help="Overwrite files that exist.")
def init(provider: str, target: Path, force: bool) -> int:
    """Write a starter compress.yaml and the provider's CI file."""
    from ci_compress.ci.init import write_starter

    for path in write_starter(provider, target, force=force):
        click.echo(f"wrote {path}")
    click.echo("next: edit compress.yaml (model, holdout, thresholds), then `ci-compress validate`")
    return 0


def _crash_log(exc: BaseException, argv: Sequence[str]) -> Path:
    fd, name = tempfile.mkstemp(prefix="ci-compress-crash-", suffix=".log")
    with os.fdopen(fd, "w") as f:
        from ci_compress.redaction import redact

        f.write(redact(f"ci-compress {__version__}, argv {list(argv)!r}\n"))
        f.write(redact("".join(traceback.format_exception(exc))))
    return Path(name)


def _boundary(invoke: Callable[[], Any], argv: Sequence[str]) -> int:
    """The single place that maps errors to exit codes and messages on stderr.

    A SIGTERM handler installed by a command (``run`` turns CI's cancel into
    KeyboardInterrupt) is put back afterwards, so an in-process caller (tests, a
    notebook) keeps its own.
    """
    in_main_thread = threading.current_thread() is threading.main_thread()
    sigterm = signal.getsignal(signal.SIGTERM) if in_main_thread else None
    try:
        rv = invoke()
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        return 130
    except click.ClickException as e:
        e.show()
        return int(ExitCode.CONFIG)
    except click.exceptions.Exit as e:
        return int(e.exit_code)
    except CICompressError as e:
        from ci_compress.redaction import redact

        click.echo(f"Error: {redact(e.message)}", err=True)
        if e.hint:
            click.echo(f"  hint: {redact(e.hint)}", err=True)
        return int(e.exit_code)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        return 130
    except Exception as e:
        from ci_compress.redaction import redact

        if isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS:
            # A full disk wherever it struck (torch, MLflow, a temporary file): never a bug.
            err = os_error(e)
            click.echo(f"Error: {redact(err.message)}", err=True)
            click.echo(f"  hint: {redact(err.hint or '')}", err=True)
            return int(err.exit_code)
        log = _crash_log(e, argv)
        click.echo(
            redact(
                f"Error: internal error in ci-compress ({type(e).__name__}: {e}); details in {log}"
            ),
            err=True,
        )
        click.echo("  hint: this is a bug; please report it with the crash log", err=True)
        return int(ExitCode.INTERNAL)
    finally:
        if sigterm is not None and signal.getsignal(signal.SIGTERM) is not sigterm:
            signal.signal(signal.SIGTERM, sigterm)
    return int(rv or 0) if isinstance(rv, int) else 0


def main(argv: list[str] | None = None) -> int:
    """Console entry point (``ci-compress``, ``python -m ci_compress``): the exit code.

    The error boundary itself is :meth:`BoundaryGroup.main`.
    """
    return cli.main(args=argv, prog_name="ci-compress", standalone_mode=False)
