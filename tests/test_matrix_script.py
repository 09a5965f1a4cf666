"""The kernel matrix's check script against today's package and against itself: it runs only inside the
guests (and once on the host), so a name removed from the package, or a check a row runs but does not
expect, would otherwise first show there, twenty minutes into CI."""
import ast
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
    spec.loader.exec_module(module)   # fails on a name the package no longer has
    return module


def _checks_run_by(function: str) -> set[str]:
    """The names given as a string to checks.run(...) inside `function` of the script."""
    tree = ast.parse(SCRIPT.read_text())
    body = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == function)
    return {c.args[0].value for c in ast.walk(body) if isinstance(c, ast.Call) and isinstance(c.func, ast.Attribute)
            and c.func.attr == "run" and c.args and isinstance(c.args[0], ast.Constant)}


# an arm64 row with pages other than 4 KiB expects "scenario-refused" in place of the scenarios (main_arm64)
@pytest.mark.parametrize("function, expected, besides", [("main", "X86_CHECKS", ()),
                                                         ("main_arm64", "ARM64_CHECKS", ("scenario-refused",))])
def test_every_check_a_row_runs_is_one_it_expects(matrix_checks, function, expected, besides):
    run = _checks_run_by(function)
    assert run, f"no checks.run(...) found in {function}"
    assert run - set(getattr(matrix_checks, expected)) - set(besides) == set()
