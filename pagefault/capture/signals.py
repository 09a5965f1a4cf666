"""Waiting for a traced program to end while the user may press Ctrl-C: the counter's and the latency tier's
shared wait (their kernel-side counts are read after it, whatever ended it)."""

from __future__ import annotations

import os
import select
import signal
import time
from typing import Callable

from .runner import Target
from .tracer import STOP_SIGNALS, _Stop


def wait_forwarding_signals(target: Target, notes: list[str], tick: Callable[[], None] | None = None) -> None:
    """Wait for the target to end. A first SIGINT, SIGTERM or SIGHUP goes to a started program (counting goes
    on until it ends) or, with -p, ends the counting and leaves the process running; a second one kills a
    started program. Either way the counts made until then are kept and printed.

    :returns: None once the target has ended or is let go; ``notes`` says what was done. Raises nothing of its own."""
    stop = _Stop()
    old = {s: signal.signal(s, stop) for s in STOP_SIGNALS}
    forwarded = False
    try:
        while not wait_for_end(target, 0.2):
            if tick:
                tick()
            if not stop.count:
                continue
            name = signal.Signals(stop.signal or signal.SIGINT).name
            if not target.spawned:
                notes.append(f"stopped by {name}: the counts are those made until then; PID {target.pid} runs on")
                return
            if stop.count >= 2:
                target.kill(signal.SIGKILL)
                notes.append(f"pagefault killed the program after a second {name}: the counts are those made until then")
                return
            if not forwarded:
                target.kill(stop.signal or signal.SIGTERM)
                forwarded = True
                notes.append(f"{name} was passed to the program; the counts go on to its end")
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def wait_for_end(target: Target, timeout: float | None = None) -> bool:
    """Wait for the target to end (woken at once through a pidfd), at most `timeout` s; True if it ended.

    Raises nothing."""
    try:
        fd = os.pidfd_open(target.pid)
    except OSError:     # gone already, or a kernel before 5.3
        fd = -1
    try:
        deadline = None if timeout is None else time.monotonic() + timeout
        while target.poll():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            if fd >= 0:
                select.select([fd], [], [], 0.5 if left is None else min(left, 0.5))
            else:
                time.sleep(0.02)
        return True
    finally:
        if fd >= 0:
            os.close(fd)
