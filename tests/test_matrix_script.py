"""The kernel matrix's check script imports cleanly against today's package: it runs only inside the guests
(and once on the host), so a name removed from the package would otherwise first fail there, an hour into CI."""
import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "matrix_checks.py"


@pytest.fixture()
def matrix_checks(monkeypatch):
    monkeypatch.setattr(sys, "argv", [str(SCRIPT)])
    spec = importlib.util.spec_from_file_location("matrix_checks_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("version, held_out", [((6, 1), False), ((6, 9), False), ((6, 10), True), ((6, 18), True)])
def test_the_held_out_check_runs_where_the_count_starts_at_exec(matrix_checks, monkeypatch, version, held_out):
    monkeypatch.setattr(matrix_checks, "kernel_version", lambda: version)
    checks = matrix_checks.x86_checks()
    assert ("heldout" in checks) is held_out
    assert checks[:len(matrix_checks.X86_CHECKS)] == matrix_checks.X86_CHECKS
