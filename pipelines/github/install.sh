#!/usr/bin/env bash
# Install step of action.yml. Inputs arrive as INPUT_* environment variables.
# ci-compress comes from the action's own checkout ($GITHUB_ACTION_PATH: the ref in
# `uses:`), never from a package index by name; torch is pinned and from the CPU index.
set -euo pipefail
if [ "${INPUT_INSTALL:-true}" != "true" ]; then
  echo "install: ${INPUT_INSTALL}: using the ci-compress already installed (checked before the gate)"
  exit 0
fi
fail() {
  # A failed install is an infrastructure error (exit 4), never "gate failed" (1).
  echo "::endgroup::"
  echo "::error title=ci-compress%3A install failed (exit 4)::$1"
  exit 4
}
echo "::group::pip install ci-compress"
torch_spec="${INPUT_TORCH_SPEC:-torch==2.13.0}"
if [ -n "${INPUT_TORCH_INDEX_URL:-}" ]; then
  python -m pip install "$torch_spec" --index-url "$INPUT_TORCH_INDEX_URL" || fail "pip could not install $torch_spec from $INPUT_TORCH_INDEX_URL"
else
  python -m pip install "$torch_spec" || fail "pip could not install $torch_spec"
fi
python -m pip install "$GITHUB_ACTION_PATH" || fail "pip could not install ci-compress from the action's checkout"
if [ -n "${INPUT_EXTRA_PIP_ARGS:-}" ]; then
  # Split on whitespace only: no globbing, no evaluation.
  set -f
  read -r -a extra <<< "$INPUT_EXTRA_PIP_ARGS"
  set +f
  python -m pip install "${extra[@]}" || fail "pip install ${INPUT_EXTRA_PIP_ARGS} failed"
fi
echo "::endgroup::"
python -m ci_compress --version
