"""A process that pagefault holds stopped is continued if pagefault dies, however it dies.

The compiled walk stops an attached process after the chosen fault (bpf_send_signal(SIGSTOP), from the
kernel) so that /proc can be read before the process runs on. The walk's links die with the tool, but the
stop stays: a ``kill -9`` of pagefault at that moment would leave the process stopped for good (it could be
PID 1). The guard is a small
process forked before any stop can happen. It waits on a pipe whose only writer is the tool: when the
tool ends, cleanly or not, the pipe reads EOF, and the guard continues the target if it is stopped.
A tool that ends cleanly disarms it first, so that a stop the target's owner made later is left alone;
a target that was stopped before the tool came is refused at attach (:func:`refuse_stopped`).
"""

from __future__ import annotations

import os
import signal
import time


def process_state(pid: int) -> str:
    """The state letter of /proc/PID/stat ("R", "S", "T", "t", "Z", …), or "" when the process is gone.

    Never raises."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def refuse_stopped(pid: int) -> str | None:
    """Why a process cannot be followed, if it is stopped or a zombie; None if it can.

    :returns: the reason with the fix, or None; raises nothing."""
    state = process_state(pid)
    if state in ("T", "t"):
        return (f"PID {pid} is stopped (by its owner or a debugger): pagefault never continues a process it did not "
                f"stop; fix: kill -CONT {pid}, then run again")
    if state in ("Z", "X"):
        return f"PID {pid} has exited (a zombie waiting for its parent): there is nothing left to follow"
    return None


class ResumeGuard:
    """Fork the guard for `pid`; :meth:`disarm` when the tool ends cleanly (it continued the target itself)."""

    DISARM = b"d"

    def __init__(self, pid: int):
        read_end, self._write_end = os.pipe()
        self.child = os.fork()
        if self.child == 0:   # the guard: nothing of the tool's but the pipe
            try:
                os.close(self._write_end)
                _keep_only(read_end)
                os.setsid()           # a Ctrl-C to the tool's process group is not for it
                word = b""
                while chunk := os.read(read_end, 1):
                    word = chunk
                if word != self.DISARM:
                    _continue_if_stopped(pid)
            finally:
                os._exit(0)
        os.close(read_end)

    def disarm(self) -> None:
        """The tool ends in order: the guard leaves the target as it is."""
        if self._write_end >= 0:
            try:
                os.write(self._write_end, self.DISARM)
            finally:
                os.close(self._write_end)
                self._write_end = -1
            os.waitpid(self.child, 0)


def _keep_only(fd: int) -> None:
    """Close every descriptor but `fd` (and point 0-2 at /dev/null): the guard holds nothing of the tool's
    (perf events, BPF links, the terminal)."""
    null = os.open(os.devnull, os.O_RDWR)
    for std in (0, 1, 2):
        os.dup2(null, std)
    for name in os.listdir("/proc/self/fd"):
        n = int(name)
        if n > 2 and n != fd:
            try:
                os.close(n)
            except OSError:
                pass


def _continue_if_stopped(pid: int) -> None:
    # the walk's stop may still be landing as the tool dies; give it a moment, then look twice
    for _ in range(2):
        time.sleep(0.1)
        if process_state(pid) in ("T", "t"):
            try:
                os.kill(pid, signal.SIGCONT)
            except OSError:
                return
