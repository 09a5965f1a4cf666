"""Red team, second round (issue 28, class 1): terminal controls in names the traced program controls.

New cases beyond the first round's prctl name and ESC[2J file: a comm written through /proc/self/comm, a thread
name (pthread_setname_np), a function symbol whose .symtab name holds OSC 52, BEL and a bidi override, the
executable's own file name and an argument, each through trace (summary, -g, --folded -, -o), report (text,
--events, folded) and error lines naming a path. None may reach the terminal raw; the names must still be
there, escaped."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.live
CLI = [sys.executable, "-m", "pagefault"]
RAW = ("\x1b", "\x07", "\u202e", "\x9b")
OSC_PATH = "x\x1b]52;c;QQ==\x07\u202e"


@pytest.fixture(scope="module")
def hostile(cbin, tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    exe = d / "h\x1b[2Jbin\u202e"
    shutil.copy(cbin("hostile_names"), exe)
    return d, exe


def _run(argv, cwd) -> str:
    r = subprocess.run(CLI + argv, cwd=cwd, capture_output=True, timeout=300)
    text = (r.stdout + r.stderr).decode(errors="replace")
    assert "Traceback" not in text, text
    for c in RAW:
        assert c not in text, (argv[:3], c, text[:2000])
    return text


def test_names_the_program_controls_are_escaped_everywhere(can_trace, hostile):
    d, exe = hostile
    run = [str(exe), "arg\x1b[31m"]
    _run(["trace", "-q", "--", *run], d)
    folded = _run(["trace", "-q", "-g", "--folded", "-", "--", *run], d)
    assert "evil\\x1b]52" in folded and "h\\x1b[2Jbin\\u202e" in folded, folded[:2000]
    _run(["trace", "-q", "-g", "-o", "r.pfrec", "--force", "--", *run], d)
    assert "evil\\x1b]52" in _run(["report", "r.pfrec"], d)
    assert "\\x1b]0;PWN\\x07" in _run(["report", "--events", "r.pfrec"], d)     # the comm /proc/self/comm set
    assert "evil\\x1b]52" in _run(["report", "--format", "folded", "r.pfrec"], d)


@pytest.mark.parametrize("argv", [
    ["trace", "-o", f"/nonexistent{OSC_PATH}/r.pfrec", "--", "true"],
    ["report", f"{OSC_PATH}.pfrec"],
    ["trace", "--", f"./nonexistent{OSC_PATH}"],
    ["journey", "--replay", OSC_PATH],
    ["trace", "-p", f"1{OSC_PATH}"],
    [OSC_PATH],
])
def test_error_lines_naming_a_hostile_path_are_escaped(hostile, argv):
    d, _exe = hostile
    assert "\\x1b]52" in _run(argv, d)
