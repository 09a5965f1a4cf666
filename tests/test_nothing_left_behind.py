"""Live: every child dies with the tool, whatever kills it; nothing recorded is lost silently."""

import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from live_helpers.full_disk import FILLER, full_tmpfs

CLI = [sys.executable, "-m", "pagefault"]
pytestmark = pytest.mark.live


def _children(pid: int) -> set[int]:
    """Every descendant of pid, from /proc/PID/task/*/children."""
    out: set[int] = set()
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tasks:
            try:
                kids = [int(k) for k in open(f"/proc/{p}/task/{t}/children").read().split()]
            except OSError:
                continue
            for k in kids:
                if k not in out:
                    out.add(k)
                    todo.append(k)
    return out


def _bpf_links(pid: int) -> int:
    """How many BPF links the process holds (its fds whose fdinfo has a link_type): they go with its fds."""
    n = 0
    for info in Path(f"/proc/{pid}/fdinfo").iterdir():
        try:
            n += "link_type:" in info.read_text()
        except OSError:
            pass
    return n


def _cmdline(pid: int) -> str | None:
    try:
        return open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None


def _alive(pids: dict[int, str]) -> dict[int, str]:
    """Those still running with the same command line (not zombies, not reused PIDs)."""
    left = {}
    for pid, cmd in pids.items():
        try:
            state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and _cmdline(pid) == cmd:
            left[pid] = cmd
    return left


def _wait_gone(pids: dict[int, str], seconds: float = 5.0) -> dict[int, str]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        left = _alive(pids)
        if not left:
            return {}
        time.sleep(0.05)
    return _alive(pids)


class Terminal:
    """The tool on a pseudo-terminal, as a person runs it."""

    def __init__(self, argv):
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, close_fds=True,
                                     env=dict(os.environ, COLUMNS="200", TERM="dumb"))
        os.close(slave)
        self.text = ""

    def read_until(self, pattern: str, timeout: float = 120) -> re.Match:
        deadline = time.monotonic() + timeout
        while True:
            m = re.search(pattern, self.text)
            if m:
                return m
            left = deadline - time.monotonic()
            assert left > 0, f"no {pattern!r} in:\n{self.text[-3000:]}"
            ready, _, _ = select.select([self.master], [], [], min(left, 1))
            if ready:
                try:
                    self.text += os.read(self.master, 65536).decode(errors="replace")
                except OSError:
                    pass

    def wait(self, timeout: float = 60) -> int:
        """Wait for the tool to end, reading what it prints meanwhile (a full terminal would block it)."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            assert time.monotonic() < deadline, f"the tool did not end:\n{self.text[-2000:]}"
            ready, _, _ = select.select([self.master], [], [], 0.1)
            if ready:
                try:
                    self.text += os.read(self.master, 65536).decode(errors="replace")
                except OSError:
                    pass
        return self.proc.returncode

    def send(self, keys: str) -> None:
        os.write(self.master, keys.encode())

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)


PHASES = ("ready", "mapped", "touched")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGKILL], ids=lambda s: s.name)
@pytest.mark.parametrize("phase", PHASES)
def test_killing_the_interactive_journey_at_a_paused_phase_leaves_nothing(can_trace, phase, sig):
    term = Terminal(CLI + ["journey", "--tier", "bpf"])
    try:
        while True:
            m = term.read_until(r"paused at phase '(\w+)'")
            if m.group(1) == phase:
                break
            term.text = term.text[m.end():]
            term.send("\n")
        kids = {pid: _cmdline(pid) for pid in _children(term.proc.pid)}
        kids = {p: c for p, c in kids.items() if c}
        assert any("exercise-" in c for c in kids.values()), kids     # the paused program is there
        if phase == "mapped":
            assert _bpf_links(term.proc.pid), "the compiled walk's links, held by the tool"   # attached
        term.proc.send_signal(sig)
        term.wait(timeout=60)
        left = _wait_gone(kids, 3.0)
        assert not left, f"still running after {sig.name} of the tool at phase {phase}: {left}"
        if sig != signal.SIGKILL:
            assert term.proc.returncode == 128 + sig
    finally:
        term.close()


def _start_trace(argv, out: Path, *extra):
    proc = subprocess.Popen(CLI + ["trace", "-q", "-o", str(out), *extra, "--", *map(str, argv)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    m = re.match(r"pid=(\d+)", line)
    assert m, line + proc.stderr.read()
    return proc, int(m.group(1))


def test_a_killed_trace_takes_its_target_along_and_its_part_file_is_read_as_partial(can_trace, cbin, tmp_path):
    out = tmp_path / "k.pfrec"
    proc, target = _start_trace([cbin("toucher"), 0, 500], out)
    time.sleep(1.5)
    cmd = _cmdline(target)
    proc.kill()
    proc.wait()
    assert not _wait_gone({target: cmd}, 3.0), "the traced program ran on after trace was killed"
    parts = list(tmp_path.glob("k.pfrec.*.part"))
    assert len(parts) == 1 and not out.exists()
    r = subprocess.run(CLI + ["report", "--json", str(parts[0])], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["integrity"].startswith("partial: the recording ends without its END chunk")
    assert s["faults"] > 100          # ~2,000 pages were touched in 1.5 s; all complete chunks are read
    assert s["lost"] is None and "partial" in s["lost_how"]


def test_a_second_ctrl_c_stops_a_target_that_ignores_the_first(can_trace, cbin, tmp_path):
    out = tmp_path / "i.pfrec"
    proc, target = _start_trace([cbin("toucher"), 0, 1000, "ignore"], out, "--json", "--summary", "-")
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    time.sleep(1.5)
    assert proc.poll() is None and _alive({target: _cmdline(target)}), "the target ignores SIGINT: still traced"
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    summary = json.loads(stdout[stdout.index("{"):])
    assert summary["exit"].startswith("killed by SIGKILL (pagefault killed it after a second SIGINT")
    assert summary["faults"] > 100


def test_lost_events_are_counted_even_after_the_last_lost_record(can_trace, cbin, tmp_path):
    pages = 1 << 18
    out = tmp_path / "l.pfrec"
    proc, target = _start_trace([cbin("toucher"), pages, 0], out, "--json", "--summary", "-", "--buffer-mb", "1")
    proc.send_signal(signal.SIGSTOP)       # the reader sleeps: the 1 MiB buffers overflow
    time.sleep(3)
    proc.send_signal(signal.SIGCONT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    s = json.loads(stdout[stdout.index("{"):])
    assert s["faults"] < pages, "the test needs the buffer to overflow"
    assert s["lost"] is not None and s["lost"] > 0
    fired = int(re.search(r"exceptions:page_fault_user: ([\d,]+) fired", s["lost_how"]).group(1).replace(",", ""))
    assert fired >= pages, "the kernel counted every fault of the program"
    received = int(re.search(r"exceptions:page_fault_user: [\d,]+ fired, ([\d,]+) received",
                             s["lost_how"]).group(1).replace(",", ""))
    assert received == s["faults"] - s["kernel_mode_faults"]    # page_fault_kernel's are counted apart
    assert s["lost"] >= fired - received


def test_a_full_disk_keeps_what_was_recorded_and_says_so(can_trace, cbin):
    mnt = Path(tempfile.mkdtemp(prefix="pf-full-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], check=True)
    try:
        out = mnt / "f.pfrec"
        r = subprocess.run(CLI + ["trace", "-q", "-o", str(out), "--", str(cbin("toucher")), str(1 << 17), "0"],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        text = " ".join(r.stderr.split())    # the summary and the tool's lines: stdout is the program's
        assert "the disk filled (No space left on device after" in text and "report reads as partial" in text
        rep = subprocess.run(CLI + ["report", "--json", str(out)], capture_output=True, text=True, timeout=120)
        assert rep.returncode == 0, rep.stderr
        s = json.loads(rep.stdout)
        assert s["integrity"].startswith("partial") and 0 < s["faults"] < 1 << 17
    finally:
        subprocess.run(["umount", str(mnt)])
        mnt.rmdir()


def test_a_corrupted_record_is_found_and_what_precedes_it_is_kept(can_trace, cbin, tmp_path):
    out = tmp_path / "c.pfrec"
    r = subprocess.run(CLI + ["trace", "-q", "--json", "--summary", "-", "-o", str(out), "--", str(cbin("toucher")), "20000",
                              "0"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    whole = json.loads(r.stdout[r.stdout.index("{"):])
    data = bytearray(out.read_bytes())
    at = len(data) * 3 // 5 & ~7
    data[at + 6] ^= 0xFF                     # a record's size field (or whatever lies there) is damaged
    out.write_bytes(bytes(data))
    r = subprocess.run(CLI + ["report", str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    text = " ".join(r.stdout.split())
    assert "recording partial: damaged at byte" in text and "bytes after it skipped" in text
    r = subprocess.run(CLI + ["report", "--json", str(out)], capture_output=True, text=True, timeout=120)
    damaged = json.loads(r.stdout)
    # each chunk holds one ring buffer's records (faults or allocations): what follows the damage is gone
    assert 0 < damaged["faults"] + damaged["allocations"] < whole["faults"] + whole["allocations"]


def test_trace_refuses_itself_and_impossible_pids():
    r = subprocess.run(["sh", "-c", f"exec {sys.executable} -m pagefault trace -q -p $$"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "is pagefault itself" in r.stderr, r.stderr
    for pid in ("99999999999", "0", "4194304"):
        r = subprocess.run(CLI + ["trace", "-q", "-p", pid], capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and "Traceback" not in r.stderr and "bad PID" in r.stderr, r.stderr


TOOL_HOLDING_A_STOP = """
import os, signal, sys
from pagefault.capture.resume_guard import ResumeGuard
target = int(sys.argv[1])
guard = ResumeGuard(target)          # as journey -p makes it, before the walk can stop the target
os.kill(target, signal.SIGSTOP)      # as the walk's bpf_send_signal(SIGSTOP) after the chosen fault
if sys.argv[2] == "clean":
    os.kill(target, signal.SIGCONT)  # the tool's own cleanup, then the guard is disarmed
    guard.disarm()
print("holding", flush=True)
signal.pause()
"""


@pytest.mark.parametrize("end", ["killed", "clean"])
def test_a_tool_killed_while_it_holds_its_attached_target_stopped_leaves_it_running(end):
    """The walk stops an attached process after the chosen fault while /proc is read; a kill -9 of pagefault
    then left it stopped for good (4 of 4 runs). The resume guard journey -p forks continues it; once the
    tool has ended in order (disarmed), a later stop is the owner's and stays."""
    from pagefault.capture.resume_guard import process_state
    target = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    tool = subprocess.Popen([sys.executable, "-c", TOOL_HOLDING_A_STOP, str(target.pid), end], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert tool.stdout.readline().strip() == "holding"
        if end == "clean":
            os.kill(target.pid, signal.SIGSTOP)   # a stop of the owner's, after the tool ended in order
        deadline = time.monotonic() + 5           # a signal lands when the target is next scheduled
        while process_state(target.pid) not in ("T", "t") and time.monotonic() < deadline:
            time.sleep(0.01)
        assert process_state(target.pid) in ("T", "t")
        tool.kill()                               # SIGKILL: nothing of the tool's runs
        tool.wait()
        time.sleep(1.0)
        state = process_state(target.pid)
        assert state not in ("T", "t") if end == "killed" else state in ("T", "t"), state
    finally:
        if tool.poll() is None:
            tool.kill()
        target.kill()
        target.wait()


def test_journey_refuses_a_process_its_owner_stopped_and_leaves_it_stopped(can_trace):
    from pagefault.capture.journey_capture import walk_engine_problem
    if walk_engine_problem():
        pytest.skip(f"journey -p picks its fault with the compiled walk: {walk_engine_problem()}")
    from pagefault.capture.resume_guard import process_state
    target = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    try:
        time.sleep(0.3)
        os.kill(target.pid, signal.SIGSTOP)
        r = subprocess.run(CLI + ["journey", "-q", "--nth", "1", "-p", str(target.pid)], capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 2 and "is stopped" in r.stderr and f"kill -CONT {target.pid}" in r.stderr, r.stderr
        time.sleep(0.3)
        assert process_state(target.pid) in ("T", "t"), "pagefault continued a process its owner had stopped"
    finally:
        target.kill()
        target.wait()


def test_a_disk_full_before_the_first_record_is_one_line_exit_1_and_no_part_file(can_trace, cbin):
    """The header's write failing on a full disk was a traceback (ENOSPC) and left FILE.XXXX.part behind."""
    mnt = Path(tempfile.mkdtemp(prefix="pf-full-"))
    try:
        with full_tmpfs(mnt):
            r = subprocess.run(CLI + ["trace", "-q", "-o", str(mnt / "t.pfrec"), "--", str(cbin("toucher")), "0",
                                      "0"], capture_output=True, text=True, timeout=120)
            assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
            assert len(r.stderr.strip().splitlines()) == 1 and "No space left on device" in r.stderr
            assert sorted(p.name for p in mnt.iterdir()) == [FILLER]
    finally:
        mnt.rmdir()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=["INT", "TERM", "HUP"])
def test_counting_mode_keeps_its_counts_when_stopped_by_a_signal(can_trace, sig):
    """Summary-only trace of a program that ignores the signal: the first one is passed to it and counting goes
    on; a second one kills it; the counts made until then are printed either way (12 of 12 were lost)."""
    from pagefault.capture.kernel_counts import engine_problem
    if engine_problem():
        pytest.skip(engine_problem())
    program = ("import mmap, signal, time\n"
               f"signal.signal({int(sig)}, signal.SIG_IGN)\n"
               "print('ready', flush=True)\n"
               "end = time.time() + 60\n"
               "while time.time() < end:\n"
               "    m = mmap.mmap(-1, 1 << 16, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)\n"
               "    for i in range(0, 1 << 16, 4096): m[i] = 1\n"
               "    m.close(); time.sleep(0.01)\n")
    proc = subprocess.Popen(CLI + ["trace", "-q", "--json", "--summary", "-", "--", sys.executable, "-c", program],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(1.0)
        proc.send_signal(sig)
        time.sleep(1.0)
        assert proc.poll() is None, "the first signal ended the count: it was for the program, which ignores it"
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    s = json.loads(out[out.index("{\n"):])
    assert s["tier"] == "bpf-counts" and s["faults"] >= 16
    assert any("killed the program after a second" in n for n in s["notes"]), s["notes"]
