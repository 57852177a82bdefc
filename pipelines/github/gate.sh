#!/usr/bin/env bash
# Gate step of action.yml: `ci-compress run`, then `ci-compress report github`, which
# writes the job summary, step outputs, annotations and the PR comment.
# Inputs arrive as INPUT_* environment variables.
set -uo pipefail

# A missing install is a tool error with its own exit code and message, never "gate
# failed": check that ci-compress imports before running the gate.
if ! python -m ci_compress --version >/dev/null 2>&1; then
  {
    echo "exit-code=127"
    echo "state=error"
  } >> "$GITHUB_OUTPUT"
  printf '### ❌ ci-compress is not installed (exit 127)\n\nThe gate did not run: `python -m ci_compress` fails on this runner. Use `install: "true"` (the default), or install ci-compress before this step.\n' >> "$GITHUB_STEP_SUMMARY"
  echo "::error title=ci-compress is not installed (exit 127)::python -m ci_compress cannot run here; set install: 'true' or install ci-compress before this step"
  exit 127
fi

if [ -n "${INPUT_MLFLOW_TRACKING_URI:-}" ]; then
  export MLFLOW_TRACKING_URI="$INPUT_MLFLOW_TRACKING_URI"
fi

args=(run --config "$INPUT_CONFIG" --report-dir "$INPUT_REPORT_DIR")
if [ -n "${INPUT_HOLDOUT_LIMIT:-}" ]; then
  args+=(--holdout-limit "$INPUT_HOLDOUT_LIMIT")
fi

errfile="$(mktemp)"
echo "::group::ci-compress run"
# stdout to the log; stderr to the log and to $errfile (for the annotation below)
{ python -m ci_compress "${args[@]}" 2>&1 1>&3 3>&- | tee "$errfile" >&2; rc=${PIPESTATUS[0]}; } 3>&1
echo "::endgroup::"
echo "exit-code=$rc" >> "$GITHUB_OUTPUT"

# 0 pass, 1 fail, 5 inconclusive (6 warn), 7 passed but not promoted (the champion
# moved meanwhile): a result, rendered below like the others.
case "$rc" in
  0|1|5|6|7) ;;
  *)
    echo "state=error" >> "$GITHUB_OUTPUT"
    printf '### ❌ ci-compress could not run the gate (exit %s)\n\nThe log of the step says why: 2 config, 3 model or data, 4 MLflow or network, 70 a bug.\n' "$rc" >> "$GITHUB_STEP_SUMMARY"
    ;;
esac
# the tool's own one-line "Error: ..." message, escaped for a workflow command
why="$(grep -m1 '^Error: ' "$errfile" | sed -e 's/%/%25/g' -e 's/\r/%0D/g' || true)"
rm -f "$errfile"
case "$rc" in
  0|1|5|6|7) ;;
  2) echo "::error title=ci-compress%3A config or usage error (exit 2)::${why:-see the log above}"; exit 2 ;;
  3) echo "::error title=ci-compress%3A bad model artifact or holdout data (exit 3)::${why:-see the log above}"; exit 3 ;;
  4) echo "::error title=ci-compress%3A infrastructure error (exit 4)::${why:-see the log above}"; exit 4 ;;
  *) echo "::error title=ci-compress%3A could not decide (exit $rc)::${why:-see the log above}"; exit "$rc" ;;
esac

config_path="$INPUT_CONFIG"
if [ "${INPUT_WORKING_DIRECTORY:-.}" != "." ]; then
  config_path="${INPUT_WORKING_DIRECTORY%/}/$INPUT_CONFIG"
fi
comment=--no-comment
if [ "${INPUT_COMMENT_ON_PR:-true}" = "true" ]; then
  comment=--comment
fi
# report-dir is relative to the working directory, or absolute (e.g. under runner.temp)
case "$INPUT_REPORT_DIR" in
  /*) report_json="${INPUT_REPORT_DIR%/}/report.json" ;;
  *) report_json="$(pwd)/${INPUT_REPORT_DIR%/}/report.json" ;;
esac

rrc=0
python -m ci_compress report github \
  --report "$report_json" \
  --fail-on "$INPUT_FAIL_ON" \
  "$comment" \
  --comment-key "$INPUT_COMMENT_KEY" \
  --config-file "$config_path" || rrc=$?
if [ "$rc" = 7 ] && [ "$rrc" = 0 ] && [ "${INPUT_FAIL_ON:-fail}" != never ]; then
  echo "::error title=ci-compress%3A passed but not promoted (exit 7)::another gate moved the alias after this one compared itself with the champion; re-run this job to compare with the new champion"
  exit 7
fi
exit "$rrc"
