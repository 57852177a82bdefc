"""The GitHub Action, the GitLab templates and the Jenkins step render a gate that passed but was not promoted because another gate
moved the alias meanwhile (exit 7) like any other result: outputs and job summary, then
a failed step that says why. Before, exit 7 read as "could not decide (exit 7)" with no
summary. The race itself is proven in tests/e2e/test_registry_races.py; here a stand-in
``python`` runs the real gate and turns its report into that result."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.e2e.test_wrapper_github import api, gate, github_env, lines
from tests.e2e.test_wrapper_gitlab import TEMPLATES, dotenv
from tests.e2e.test_wrapper_jenkins import run_step
from tests.helpers.configs import base_config, write_config
from tests.helpers.wrapper_tools import REPO, clean_env, require_tool

pytestmark = pytest.mark.slow

STAND_IN = f"""#!{sys.executable}
import json, os, subprocess, sys
args = sys.argv[1:]
if args[:3] == ["-m", "ci_compress", "run"]:
    rc = subprocess.run([sys.executable, *args]).returncode
    if rc:
        sys.exit(rc)
    path = os.path.join(args[args.index("--report-dir") + 1], "report.json")
    report = json.load(open(path))
    report["baseline"] = {{"status": "none", "registered_model": "m", "alias": "champion",
                          "note": "no version of m holds @champion yet"}}
    report["registry"] = {{"registered_model": "m", "version": "5", "source": "runs:/r/student",
                          "alias": "champion", "promotion": "champion-moved", "promoted": False,
                          "will_promote": False, "compared_with": "3", "alias_was": "4"}}
    json.dump(report, open(path, "w"))
    print("registry: m version 5 registered; @champion not moved (champion-moved)")
    sys.exit(7)
os.execv(sys.executable, [sys.executable, *args])
"""


def _stand_in(folder: Path) -> Path:
    folder.mkdir()
    python = folder / "python"
    python.write_text(STAND_IN)
    python.chmod(0o755)
    return folder


@pytest.mark.parametrize(("fail_on", "code"), [("fail", 7), ("never", 0)])
def test_not_promoted_is_rendered_then_fails_the_step_with_exit_7(
    workdir: Path, tmp_path: Path, fail_on: str, code: int
) -> None:
    write_config(workdir, base_config())
    bins = _stand_in(tmp_path / "bin")
    with api() as (url, _state):
        env = github_env(tmp_path, url)
        env["PATH"] = f"{bins}:{env['PATH']}"
        res = gate(workdir, tmp_path, env, **{"comment-on-pr": "false", "fail-on": fail_on})
    assert res.returncode == code, res.stdout + res.stderr
    assert res.outputs["exit-code"] == "7" and res.outputs["model-version"] == "5"
    assert res.outputs["passed"] == "true"
    assert "could not run the gate" not in res.summary and "could not decide" not in res.stdout
    assert "@champion not moved (champion-moved): another gate moved it to version 4" in res.summary
    errors = lines(res.stdout, "::error")
    if code == 7:
        assert errors == [
            "::error title=ci-compress%3A passed but not promoted (exit 7)::another gate moved "
            "the alias after this one compared itself with the champion; re-run this job to "
            "compare with the new champion"
        ]
    else:
        assert errors == []
    assert (
        json.loads((workdir / "ci-compress-report" / "report.json").read_text())["registry"][
            "promotion"
        ]
        == "champion-moved"
    )


def test_jenkins_renders_not_promoted_then_fails_with_its_own_message(
    workdir: Path, tmp_path: Path
) -> None:
    """Before: "could not decide (exit 7)", no report step, no description."""
    write_config(workdir, base_config())
    python = _stand_in(tmp_path / "bin") / "python"
    out = run_step(workdir, python=str(python))
    assert out["result"] == "FAILURE", out["log"]
    assert out["error"].startswith("ci-compress: passed but not promoted (exit 7)")
    assert out["description"].startswith("ci-compress gate PASSED")
    assert "[sh ci-compress report jenkins] exit 0" in out["log"]

    never = run_step(workdir, python=str(python), failOn="never")
    assert never["result"] == "SUCCESS" and never["error"] is None, never["log"]


@pytest.mark.parametrize("template", TEMPLATES)
@pytest.mark.parametrize(("fail_on", "code"), [("fail", 7), ("never", 0)])
def test_gitlab_renders_not_promoted_then_fails_with_its_own_message(
    workdir: Path, tmp_path: Path, template: str, fail_on: str, code: int
) -> None:
    """The job script as GitLab Runner runs it (dash, ``set -e``); before: "the gate could
    not run (exit 7 ...)" and no dotenv."""
    dash = require_tool("dash")
    write_config(workdir, base_config())
    _spec, jobs = yaml.safe_load_all((REPO / template).read_text())
    (job,) = jobs.values()
    values = {
        "inputs.working-directory": ".",
        "inputs.config": "compress.yaml",
        "inputs.report-dir": "out",
        "inputs.fail-on": fail_on,
        "inputs.install": "false",
        "inputs.mr-note": "false",
        "inputs.token-variable": "CI_COMPRESS_GITLAB_TOKEN",
    }
    variables = {}
    for k, v in job["variables"].items():
        v = re.sub(r"\$\[\[\s*([\w.-]+)\s*\]\]", lambda m: values.get(m.group(1), ""), str(v))
        variables[k] = v.replace("$CI_PROJECT_DIR", str(workdir))
    variables.update(CI_COMPRESS_INSTALL="false", CI_COMPRESS_FAIL_ON=fail_on)
    env = clean_env(path_first=_stand_in(tmp_path / "bin"), **variables, CI_JOB_NAME="gate")
    proc = subprocess.run(
        [dash, "-c", "set -e\n" + "\n".join(job["script"])],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == code, out[-4000:]
    assert "could not run" not in out
    assert dotenv(workdir / "out/ci-compress.env")["GATE_STATE"] == "pass"
    said = "ci-compress: ERROR: passed but not promoted (exit 7)" in out
    assert said == (code == 7)
