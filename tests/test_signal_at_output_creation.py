"""A stop signal while a recording's file is being created (its temporary FILE.*.part opened, not yet handed to
the run that removes or names it) left the .part file behind: the red team's random-moment runs saw
`rec.pfrec.6d92716f.part` after a SIGINT at 0.45 s. The run's stop handler is now in place before the file
exists, so such a signal is counted and the run stops at once, naming what it has."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

pytestmark = pytest.mark.live

# pagefault's CLI, with the stop signal sent to ourselves just after the temporary file is opened
SIGNAL_AT_CREATION = """
import os, sys
from pagefault.capture import safe_paths
real_fdopen, sent = os.fdopen, []
def fdopen(fd, *args, **kwargs):
    if not sent:
        sent.append(1)
        os.kill(os.getpid(), int(sys.argv[1]))
        for _ in range(1000):   # Python code after the signal: its handler runs here
            pass
    return real_fdopen(fd, *args, **kwargs)
safe_paths.os.fdopen = fdopen
from pagefault.cli import main
code = main(sys.argv[2:])
print("signalled" if sent else "not-signalled", file=sys.stderr)
sys.exit(code)
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_a_signal_while_the_recording_file_is_created_leaves_no_part_file(can_trace, tmp_path, sig):
    r = subprocess.run([sys.executable, "-c", SIGNAL_AT_CREATION, str(int(sig)), "trace", "-q", "--no-summary", "-o",
                        "rec.pfrec", "--", "/bin/true"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert "signalled" in r.stderr and "not-signalled" not in r.stderr, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    left = sorted(os.listdir(tmp_path))
    assert left in ([], ["rec.pfrec"]), (left, r.stderr)
    if left:   # what it kept is a whole recording that report reads
        rep = subprocess.run([sys.executable, "-m", "pagefault", "report", "--json", str(tmp_path / "rec.pfrec")],
                             capture_output=True, text=True, timeout=120)
        assert rep.returncode == 0, rep.stderr


WHOLE_FILE_WRITER = """
import os, sys
from pathlib import Path
from pagefault.capture import safe_paths
real, sent = {"fdopen": os.fdopen, "link": os.link}, []
def signalled(name):
    def call(*args, **kwargs):
        if name == sys.argv[2] and not sent:
            sent.append(1)
            os.kill(os.getpid(), int(sys.argv[1]))
            for _ in range(1000):
                pass
        return real[name](*args, **kwargs)
    return call
safe_paths.os.fdopen, safe_paths.os.link = signalled("fdopen"), signalled("link")
try:
    safe_paths.write_output(Path("summary.json"), "{}")
except KeyboardInterrupt:
    print("interrupted after", sorted(os.listdir(".")))
"""


@pytest.mark.parametrize("moment", ["fdopen", "link"])
def test_a_ctrl_c_while_a_whole_file_is_written_is_raised_once_it_is_named(tmp_path, moment):
    r = subprocess.run([sys.executable, "-c", WHOLE_FILE_WRITER, str(int(signal.SIGINT)), moment], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "interrupted after ['summary.json']", (r.stdout, r.stderr)
    assert sorted(os.listdir(tmp_path)) == ["summary.json"] and (tmp_path / "summary.json").read_text() == "{}"
