"""A stop signal while pagefault is still starting (the CLI's modules being imported, the parser being built)
ends in one line with the signal's status, not in a traceback of whatever import it interrupted (the red team's
random-moment runs saw both: issue 28's "Ctrl-C in the first ~100 ms")."""

from __future__ import annotations

import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

# the CLI's import interrupted by `sig`, sent to ourselves from an import hook (a meta-path finder consulted
# when pagefault.cli is imported), then `python -m pagefault`'s own entry
INTERRUPTED_IMPORT = """
import os, sys
class Interrupt:
    def find_spec(self, name, path=None, target=None):
        if name == "pagefault.cli":
            os.kill(os.getpid(), int(sys.argv[1]))
            for _ in range(1000):   # Python code after the signal: its handler runs here
                pass
        return None
sys.meta_path.insert(0, Interrupt())
from pagefault.__main__ import entry
entry()
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_a_stop_signal_while_the_cli_is_imported_ends_in_one_line(sig):
    r = subprocess.run([sys.executable, "-c", INTERRUPTED_IMPORT, str(int(sig)), "doctor"], capture_output=True,
                       text=True, timeout=60)
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode == 128 + sig, (r.returncode, r.stderr)
    assert r.stderr.strip() == f"pagefault: stopped by {sig.name} while starting; nothing was traced"


def test_a_ctrl_c_while_the_parser_is_built_is_an_interruption_not_a_traceback(monkeypatch):
    from pagefault import cli

    def interrupted():
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "build_parser", interrupted)
    assert cli.main(["doctor"]) == 130


def test_the_installed_command_starts_where_python_m_pagefault_does():
    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["pagefault"] == "pagefault.__main__:entry"
