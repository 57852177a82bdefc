#!/usr/bin/env bash
# Gate step of action.yml: `ci-compress run`, then `ci-compress report github`, which
# writes the job summary, step outputs, annotations and the PR comment.
# Inputs arrive as INPUT_* environment variables.
set -uo pipefail

if [ -n "${INPUT_MLFLOW_TRACKING_URI:-}" ]; then
  export MLFLOW_TRACKING_URI="$INPUT_MLFLOW_TRACKING_URI"
fi

args=(run --config "$INPUT_CONFIG" --report-dir "$INPUT_REPORT_DIR")
if [ -n "${INPUT_HOLDOUT_LIMIT:-}" ]; then
  args+=(--holdout-limit "$INPUT_HOLDOUT_LIMIT")
fi

echo "::group::ci-compress run"
python -m ci_compress "${args[@]}"
rc=$?
echo "::endgroup::"
echo "exit-code=$rc" >> "$GITHUB_OUTPUT"

case "$rc" in
  0|1) ;;
  2) echo "::error title=ci-compress::config or usage error (exit 2); see the log above"; exit 2 ;;
  3) echo "::error title=ci-compress::bad model artifact or holdout data (exit 3); see the log above"; exit 3 ;;
  4) echo "::error title=ci-compress::infrastructure error, e.g. MLflow unreachable (exit 4); see the log above"; exit 4 ;;
  *) echo "::error title=ci-compress::ci-compress could not decide (exit $rc); see the log above"; exit "$rc" ;;
esac

config_path="$INPUT_CONFIG"
if [ "${INPUT_WORKING_DIRECTORY:-.}" != "." ]; then
  config_path="${INPUT_WORKING_DIRECTORY%/}/$INPUT_CONFIG"
fi
comment=--no-comment
if [ "${INPUT_COMMENT_ON_PR:-true}" = "true" ]; then
  comment=--comment
fi

python -m ci_compress report github \
  --report "$(pwd)/${INPUT_REPORT_DIR%/}/report.json" \
  --fail-on "$INPUT_FAIL_ON" \
  "$comment" \
  --comment-key "$INPUT_COMMENT_KEY" \
  --config-file "$config_path"
