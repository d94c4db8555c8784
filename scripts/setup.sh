#!/usr/bin/env bash
# One-time (idempotent) setup: pinned wheels + libtorch (scripts/fetch.py), a small Python
# venv with pyarrow for the read-back test, and the release build of the binary.
# Quick when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 scripts/fetch.py
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c "import pyarrow" 2>/dev/null; then
  echo "setup: creating .venv with pyarrow (used by tests to read artifacts back)" >&2
  python3 -m venv .venv
  .venv/bin/pip install --disable-pip-version-check -q "pyarrow==26.0.1"
fi
