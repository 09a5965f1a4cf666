"""`-p PID` refuses what has no faults of its own to follow, or must not be held: zombies, kernel threads,
PID 1 (unless --allow-init), and pagefault itself (capture/runner.attach)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from pagefault.capture.runner import PF_KTHREAD, TargetError, attach


def _kernel_thread() -> int:
    """A kernel thread of this machine: kthreadd (PID 2 in the root PID namespace) or any with PF_KTHREAD."""
    for entry in sorted(os.listdir("/proc"), key=lambda e: (len(e), e)):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    if int(f.read().rsplit(b")", 1)[1].split()[6]) & PF_KTHREAD:
                        return int(entry)
            except (OSError, IndexError, ValueError):
                continue
    pytest.skip("no kernel thread is visible in this PID namespace")


def test_a_kernel_thread_is_refused_with_the_reason():
    with pytest.raises(TargetError, match="kernel thread: it has no user address space"):
        attach(_kernel_thread())


def test_a_zombie_is_refused():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:      # exited, not yet reaped by us: a zombie
            with open(f"/proc/{child.pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    break
            time.sleep(0.01)
        with pytest.raises(TargetError, match="zombie"):
            attach(child.pid)
    finally:
        child.wait()


def test_pid_1_is_refused_unless_allowed():
    if not os.path.exists("/proc/1/stat"):
        pytest.skip("no PID 1 visible")
    with open("/proc/1/stat", "rb") as f:
        if int(f.read().rsplit(b")", 1)[1].split()[6]) & PF_KTHREAD:
            pytest.skip("PID 1 here is a kernel thread")
    with pytest.raises(TargetError, match="--allow-init"):
        attach(1)
    assert attach(1, allow_init=True).pid == 1


def test_a_live_process_of_ours_is_accepted_and_pagefault_itself_is_not():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert attach(child.pid).pid == child.pid
    finally:
        child.kill()
        child.wait()
    with pytest.raises(TargetError, match="pagefault itself"):
        attach(os.getpid())


def test_the_cli_refuses_pid_1_in_one_line_naming_allow_init(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("trace -p attaches as root only")
    for argv in (["trace", "-q", "--summary-only", "-p", "1"],
                 ["trace", "-q", "--no-summary", "-o", str(tmp_path / "r.pfrec"), "-p", "1"]):
        r = subprocess.run([sys.executable, "-m", "pagefault", *argv], capture_output=True, text=True, timeout=120)
        assert r.returncode != 0 and "--allow-init" in r.stderr and "Traceback" not in r.stderr, (argv, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert not list(tmp_path.iterdir())
