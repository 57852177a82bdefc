"""Run a composite action's steps the way the GitHub runner does (tests only).

Parses action.yml, fills inputs from defaults and ``with``, evaluates ``${{ }}`` for the
contexts a composite action uses (inputs, github.token, github.action_path,
steps.<id>.outputs), evaluates simple ``if:`` conditions, and runs each ``run:`` step
with ``bash --noprofile --norc -eo pipefail`` (the runner's ``shell: bash``), the step's
``env:`` and working directory, and fresh ``GITHUB_OUTPUT``/``GITHUB_STEP_SUMMARY``
files per step. ``uses:`` steps (actions/setup-python) are recorded, not run.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

EXPR = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")


@dataclass
class ActionResult:
    returncode: int
    outputs: dict[str, str]
    step_outputs: dict[str, dict[str, str]]
    summary: str
    stdout: str
    stderr: str
    skipped: list[str] = field(default_factory=list)


def parse_output_file(text: str) -> dict[str, str]:
    """GITHUB_OUTPUT syntax: ``name=value`` and ``name<<DELIM`` ... ``DELIM``."""
    out: dict[str, str] = {}
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            name, delim = line.split("<<", 1)
            j = lines.index(delim, i + 1)
            out[name] = "\n".join(lines[i + 1 : j])
            i = j + 1
            continue
        if "=" in line:
            name, value = line.split("=", 1)
            out[name] = value
        i += 1
    return out


class Context:
    def __init__(self, inputs: dict[str, str], github: dict[str, str]) -> None:
        self.inputs = inputs
        self.github = github
        self.steps: dict[str, dict[str, str]] = {}

    def value(self, expr: str) -> str:
        expr = expr.strip()
        if expr.startswith("inputs."):
            return self.inputs.get(expr.removeprefix("inputs."), "")
        if expr.startswith("github."):
            return self.github.get(expr.removeprefix("github."), "")
        m = re.fullmatch(r"steps\.([\w-]+)\.outputs\.([\w-]+)", expr)
        if m:
            return self.steps.get(m.group(1), {}).get(m.group(2), "")
        if re.fullmatch(r"'[^']*'", expr):
            return expr[1:-1]
        raise ValueError(f"expression not supported by the harness: {expr!r}")

    def substitute(self, text: str) -> str:
        return EXPR.sub(lambda m: self.value(m.group(1)), text)

    def condition(self, cond: str) -> bool:
        cond = EXPR.sub(lambda m: m.group(1), cond).strip()
        result = True
        for part in cond.split("&&"):
            m = re.fullmatch(r"\s*(\S+)\s*(==|!=)\s*(\S+)\s*", part)
            if not m:
                raise ValueError(f"condition not supported by the harness: {part!r}")
            lhs, op, rhs = self.value(m.group(1)), m.group(2), self.value(m.group(3))
            result = result and ((lhs == rhs) if op == "==" else (lhs != rhs))
        return result


def run_action(
    action_dir: Path,
    *,
    with_: dict[str, str],
    env: dict[str, str],
    workspace: Path,
    tmp: Path,
    token: str,
) -> ActionResult:
    meta: dict[str, Any] = yaml.safe_load((action_dir / "action.yml").read_text())
    assert meta["runs"]["using"] == "composite"
    unknown = set(with_) - set(meta["inputs"])
    assert not unknown, f"inputs not declared in action.yml: {unknown}"
    github = {"token": token, "action_path": str(action_dir), "workspace": str(workspace)}
    bootstrap = Context({}, github)
    inputs = {
        name: bootstrap.substitute(str(spec.get("default", "")))
        for name, spec in meta["inputs"].items()
    }
    inputs.update(with_)
    ctx = Context(inputs, github)
    summary_parts: list[str] = []
    stdout, stderr = [], []
    skipped: list[str] = []
    rc = 0
    for n, step in enumerate(meta["runs"]["steps"]):
        name = step.get("name", f"step {n}")
        if "if" in step and not ctx.condition(str(step["if"])):
            skipped.append(name)
            continue
        if "uses" in step:
            skipped.append(name)  # not run here: e.g. actions/setup-python
            continue
        assert step.get("shell") == "bash", f"{name}: composite run steps need shell: bash"
        assert "${{" not in step["run"], f"{name}: inputs must reach run: through env:"
        out_file = tmp / f"output-{n}"
        sum_file = tmp / f"summary-{n}"
        out_file.write_text("")
        sum_file.write_text("")
        step_env = {
            **env,
            "GITHUB_ACTION_PATH": str(action_dir),
            "GITHUB_WORKSPACE": str(workspace),
            "GITHUB_OUTPUT": str(out_file),
            "GITHUB_STEP_SUMMARY": str(sum_file),
        }
        step_env.update({k: ctx.substitute(str(v)) for k, v in step.get("env", {}).items()})
        cwd = workspace / ctx.substitute(str(step.get("working-directory", ".")))
        script = tmp / f"step-{n}.sh"
        script.write_text(step["run"])
        proc = subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)],
            cwd=cwd,
            env=step_env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        stdout.append(proc.stdout)
        stderr.append(proc.stderr)
        summary_parts.append(sum_file.read_text())
        if "id" in step:
            ctx.steps[step["id"]] = parse_output_file(out_file.read_text())
        if proc.returncode != 0:
            rc = proc.returncode
            break
    outputs = {name: ctx.substitute(str(spec["value"])) for name, spec in meta["outputs"].items()}
    return ActionResult(
        returncode=rc,
        outputs=outputs,
        step_outputs=ctx.steps,
        summary="".join(summary_parts),
        stdout="".join(stdout),
        stderr="".join(stderr),
        skipped=skipped,
    )
