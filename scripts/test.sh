#!/usr/bin/env bash
# Installs pagefault with its test dependencies, checks the pure layers (ruff: lint and import order;
# mypy: types) and runs the whole test suite (live tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
PURE=(pagefault/decode pagefault/model pagefault/journey pagefault/evidence)
echo "test: ruff and mypy on ${PURE[*]}"
.venv/bin/ruff check "${PURE[@]}"
.venv/bin/mypy "${PURE[@]}"
exec .venv/bin/python -m pytest -q -ra "$@"
