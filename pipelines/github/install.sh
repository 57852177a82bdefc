#!/usr/bin/env bash
# Install step of action.yml. Inputs arrive as INPUT_* environment variables.
set -euo pipefail
if [ "${INPUT_INSTALL:-true}" != "true" ]; then
  echo "install: ${INPUT_INSTALL}: using $(python -m ci_compress --version 2>/dev/null || echo 'the ci-compress on PATH')"
  exit 0
fi
echo "::group::pip install ci-compress"
python -m pip install --upgrade pip
if [ -n "${INPUT_TORCH_INDEX_URL:-}" ]; then
  python -m pip install "${INPUT_TORCH_SPEC:-torch}" --index-url "$INPUT_TORCH_INDEX_URL"
else
  python -m pip install "${INPUT_TORCH_SPEC:-torch}"
fi
if [ -n "${INPUT_VERSION:-}" ]; then
  python -m pip install "ci-compress==${INPUT_VERSION}"
else
  python -m pip install "$GITHUB_ACTION_PATH"
fi
if [ -n "${INPUT_EXTRA_PIP_ARGS:-}" ]; then
  # Split on whitespace only: no globbing, no evaluation.
  set -f
  read -r -a extra <<< "$INPUT_EXTRA_PIP_ARGS"
  set +f
  python -m pip install "${extra[@]}"
fi
echo "::endgroup::"
python -m ci_compress --version
