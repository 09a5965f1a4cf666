"""Red team, second round (issue 28, classes 7, 8 and 10): stop signals at any moment of a `-p` capture.

A signal that lands inside libbpf's log callback (a ctypes callback: the CLI's Terminated raised there was
swallowed, 'Exception ignored on calling ctypes callback function') was lost, and `trace --summary-only -p`
counted on until its target ended: a hang. Here the signal is sent from inside that very callback, in each mode,
and then at random moments of the first second; every run must end within 10 s in one line or with its counts,
and leave its target running, not stopped and not traced. A target its owner stops during a count is left
stopped (the count never stopped it, so it must not continue it)."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time

import pytest
from test_kill_phases import TOUCHER

from pagefault.capture.resume_guard import process_state

pytestmark = pytest.mark.live

MODES = {
    "trace-count": ["trace", "-q", "--summary-only", "-p"],
    "trace-record": ["trace", "-q", "--no-summary", "-o", "rec.pfrec", "-p"],
    "journey": ["journey", "-q", "--no-pause", "--nth", "100000", "-p"],
}
STOPS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# the CLI, with the first message libbpf logs turned into a stop signal sent to ourselves, from inside the callback
SIGNAL_IN_CALLBACK = """
import os, signal, sys
from pagefault.capture import libbpf
original, sent = libbpf._on_print, []
def on_print(level, fmt, ap):
    if not sent:
        sent.append(1)
        os.kill(os.getpid(), int(sys.argv[1]))
        for _ in range(1000):   # Python code after the signal: the handler runs here, inside the callback
            pass
    return original(level, fmt, ap)
libbpf._on_print = on_print
from pagefault.cli import main
code = main(sys.argv[2:])
print("callback-signalled" if sent else "no-callback", file=sys.stderr)
sys.exit(code)
"""


@pytest.fixture
def toucher():
    target = subprocess.Popen([sys.executable, "-c", TOUCHER], stdout=subprocess.PIPE, text=True)
    assert int(target.stdout.readline()) == target.pid
    yield target
    target.kill()
    target.wait()


def _tracer_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(line.split()[1] for line in f if line.startswith("TracerPid:")))


def _ended_cleanly(tool: subprocess.Popen, sig: int, what: str) -> str:
    try:
        _out, err = tool.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(tool.pid, signal.SIGKILL)
        tool.communicate()
        pytest.fail(f"{what}: still running 10 s after {signal.Signals(sig).name} (the signal was lost)")
    text = err.decode(errors="replace")
    # a SIGINT in Python's own start-up (site, the imports), before pagefault's main() runs, is Python's
    # KeyboardInterrupt traceback: nothing of pagefault's has started then, and nothing can catch it. (Python's
    # site module has a main() of its own: "Fatal Python error: init_import_site" tracebacks name `<frozen site>`,
    # line N, in main`; only pagefault's cli main counts as started.)
    in_startup = (sig == signal.SIGINT and not re.search(r'pagefault/cli\.py", line \d+, in main', text)
                  and text.rstrip().endswith("KeyboardInterrupt"))
    assert in_startup or ("Traceback" not in text and "Exception ignored" not in text), text
    # the counts (exit 0), or one line saying which signal stopped it; before Python's handlers exist, the signal's
    # own default action
    assert tool.returncode in (0, 128 + sig, -sig, 1 if in_startup else 0), (tool.returncode, text)
    return text


def _target_untouched(target: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and process_state(target.pid) in ("T", "t"):
        time.sleep(0.05)
    assert process_state(target.pid) not in ("T", "t", "", "Z", "X"), f"{what}: target {process_state(target.pid)}"
    assert _tracer_of(target.pid) == 0, what


@pytest.mark.parametrize("sig", STOPS, ids=lambda s: s.name)
@pytest.mark.parametrize("mode", ["trace-count", "journey"])
def test_a_signal_inside_libbpfs_log_callback_is_not_lost(can_trace, tmp_path, toucher, mode, sig):
    tool = subprocess.Popen([sys.executable, "-c", SIGNAL_IN_CALLBACK, str(int(sig)), *MODES[mode], str(toucher.pid)],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    text = _ended_cleanly(tool, sig, f"{mode} signalled in libbpf's callback")
    assert "callback-signalled" in text, text     # the signal really was sent from inside the callback
    assert tool.returncode == (130 if sig == signal.SIGINT else 128 + sig), text
    assert f"stopped by {sig.name}" in text or (sig == signal.SIGINT and "interrupted" in text), text
    _target_untouched(toucher, mode)
    assert not [p.name for p in tmp_path.iterdir()]


@pytest.mark.parametrize("mode", list(MODES))
def test_stop_signals_at_random_moments_of_the_first_second(can_trace, tmp_path, toucher, mode):
    rng = random.Random(int.from_bytes(os.urandom(4), "little"))
    for attempt in range(8):
        run_dir = tmp_path / str(attempt)
        run_dir.mkdir()
        delay, sig = rng.uniform(0, 1.0), rng.choice(STOPS)
        what = f"{mode} with {sig.name} after {delay:.2f} s"
        tool = subprocess.Popen([sys.executable, "-m", "pagefault", *MODES[mode], str(toucher.pid)], cwd=run_dir,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        time.sleep(delay)
        tool.send_signal(sig)
        text = _ended_cleanly(tool, sig, what)
        if mode != "journey" and tool.returncode == 0:   # a count ended by the signal prints it and says so
            assert "stopped by" in text or "page faults" in text or mode == "trace-record", (what, text)
        _target_untouched(toucher, what)
        left = [p.name for p in run_dir.iterdir()]
        assert left in ([], ["rec.pfrec"]), (what, left)


def _owner_stops_it_then(tool: subprocess.Popen, target: subprocess.Popen, sig: int) -> tuple[bytes, str]:
    """Once the tool holds its BPF links, the target's owner stops it (SIGSTOP), then the tool gets `sig`; the
    tool's output, and the target's state half a second after the tool ended."""
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not _counting(tool.pid):
            time.sleep(0.05)
        time.sleep(0.3)
        os.kill(target.pid, signal.SIGSTOP)      # its owner's job control, not ours
        time.sleep(0.2)
        tool.send_signal(sig)
        out, err = tool.communicate(timeout=10)
        time.sleep(0.5)     # a resume guard, disarmed, leaves it too
        return out + err, process_state(target.pid)
    finally:
        os.kill(target.pid, signal.SIGCONT)
        if tool.poll() is None:
            os.killpg(tool.pid, signal.SIGKILL)
            tool.wait()


def test_a_target_its_owner_stops_during_a_count_stays_stopped(can_trace, tmp_path, toucher):
    tool = subprocess.Popen([sys.executable, "-m", "pagefault", *MODES["trace-count"], str(toucher.pid)], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    output, state = _owner_stops_it_then(tool, toucher, signal.SIGINT)
    assert tool.returncode == 0 and b"page faults" in output, output
    assert state in ("T", "t"), "pagefault continued a process its owner had stopped"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_a_target_its_owner_stops_while_journey_waits_stays_stopped(can_trace, tmp_path, toucher, sig):
    """journey -p waits for a fault in the program's own text (never, for the Python toucher); its owner stops
    it meanwhile; the journey is stopped: the walk never stopped the process, so it is not continued."""
    tool = subprocess.Popen([sys.executable, "-m", "pagefault", "journey", "-q", "--no-pause", "-p", str(toucher.pid)],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    output, state = _owner_stops_it_then(tool, toucher, sig)
    assert tool.returncode == (130 if sig == signal.SIGINT else 128 + sig), output
    assert state in ("T", "t"), "pagefault continued a process its owner had stopped"


def _counting(pid: int) -> bool:
    """The tool holds a BPF link (its counting programs are attached)."""
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            if os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:bpf_link":
                return True
    except OSError:
        pass
    return False
