"""Input files the user names are read only if they are regular files (issue 28: a FIFO given to --replay,
report or as the exercises file blocked forever; --replay /dev/zero read 512 MiB first)."""

import os
import subprocess
import sys
import time

import pytest

CLI = [sys.executable, "-m", "pagefault"]


@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "input"
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("command", [["journey", "--replay", "PATH"], ["report", "PATH"], ["report", "--events", "PATH"]],
                         ids=["replay", "report", "events"])
@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_fifo_or_a_device_is_one_line_at_once(command, kind, fifo):
    path = str(fifo) if kind == "fifo" else "/dev/zero"
    t0 = time.monotonic()
    r = subprocess.run(CLI + [a.replace("PATH", path) for a in command], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and time.monotonic() - t0 < 30, r.stderr
    assert "not a regular file" in r.stderr and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_an_exercises_file_that_is_a_fifo_is_refused(tmp_path):
    state = tmp_path / "state"
    (state / "pagefault").mkdir(parents=True)
    os.mkfifo(state / "pagefault" / "exercises.json")
    r = subprocess.run(CLI + ["exercise", "--model", "--list"], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "XDG_STATE_HOME": str(state)})
    assert r.returncode == 2 and "not a regular file" in r.stderr and "Traceback" not in r.stderr, r.stderr
