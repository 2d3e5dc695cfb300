#!/usr/bin/env bash
# Creates .venv (if missing), installs the project, starts the app on the bundled demo model.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q -e .
export GRADIO_ANALYTICS_ENABLED=False
exec .venv/bin/python launch.py "$@"
