#!/usr/bin/env bash
# Installs pagefault with its test dependencies, checks the pure layers (ruff: lint and import order;
# mypy: types), checks the layers (import-linter) and runs the whole test suite (live tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
# the arm64 objects too, where an arm64 kernel image is cached (the matrix's arm64 root, which the matrix builds
# after these tests on a fresh machine): their tests then run here; without one they say so and skip
if [ "$(uname -m)" != aarch64 ]; then
    bash scripts/build-bpf.sh --arch aarch64 2>/dev/null || echo "test: no arm64 kernel image cached yet: the arm64 objects' tests skip here (the kernel matrix builds and loads them)"
fi
# ruff and mypy over the whole package, as strict as over the pure layers (issue 27: nothing is left out)
echo "test: ruff and mypy on pagefault/"
.venv/bin/ruff check pagefault
.venv/bin/mypy pagefault
echo "test: the layers of DESIGN.md (import-linter contracts in pyproject.toml)"
.venv/bin/lint-imports --no-cache
# setup.sh installed golang-go: the pprof export's tests fail rather than skip without go tool pprof
export PAGEFAULT_TESTS_NEED_GO=1
exec .venv/bin/python -m pytest -q -ra "$@"
