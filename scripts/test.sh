#!/usr/bin/env bash
# Installs pagefault with its test dependencies and runs the whole test suite (live tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
exec .venv/bin/python -m pytest -q -ra "$@"
