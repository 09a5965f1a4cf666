#!/usr/bin/env bash
# Installs pagefault with its test dependencies, checks the pure layers (ruff: lint and import order;
# mypy: types), checks the layers (import-linter) and runs the whole test suite (live tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
PURE=(pagefault/decode pagefault/model pagefault/journey pagefault/evidence)
echo "test: ruff and mypy on ${PURE[*]}"
.venv/bin/ruff check "${PURE[@]}"
.venv/bin/mypy "${PURE[@]}"
echo "test: the layers of DESIGN.md (import-linter contracts in pyproject.toml)"
.venv/bin/lint-imports --no-cache
exec .venv/bin/python -m pytest -q -ra "$@"
