"""The journey command's capture files keep the project's bound on function length (80 lines in capture/)."""

import ast
from pathlib import Path

from pagefault import capture

FILES = ("program_fault.py", "seen_instead.py")


def test_no_function_over_80_lines_in_the_program_capture():
    long = []
    for name in FILES:
        tree = ast.parse((Path(capture.__file__).parent / name).read_text())
        long += [f"{name}:{f.lineno} {f.name} ({f.end_lineno - f.lineno + 1} lines)" for f in ast.walk(tree)
                 if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)) and f.end_lineno - f.lineno + 1 > 80]
    assert long == []
