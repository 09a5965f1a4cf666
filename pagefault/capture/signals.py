"""Stop signals during a capture: deferred across the parts that must not be cut (a libbpf call that calls back
into Python, a load, the cleanup), and the counter's and the latency tier's wait for the traced program (their
kernel-side counts are read after it, whatever ended it)."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import threading
import time
from typing import Callable, Iterator

from .runner import Target
from .signal_deferral import STOP_SIGNALS, signals_deferred, swap_handlers  # noqa: F401  (signals_deferred: re-exported)
from .tracer import CaptureError


class StopSignals:
    """SIGINT, SIGTERM and SIGHUP as they arrive during a capture: counted, never raised in the middle of it."""

    def __init__(self) -> None:
        self.count = 0
        self.signal: int | None = None
        self.taken = False      # the capture acted on them (ended the count, passed them on): not raised again

    def __call__(self, signum: int, _frame: object) -> None:
        self.count += 1
        self.signal = self.signal or signum


class CaptureStopped(CaptureError):
    """A stop signal came before the capture began: stop_signals_caught() raises it again through the handler it
    replaced (the CLI's one line, 'stopped by SIGTERM'); this shows only where that handler ignores it."""

    def __init__(self) -> None:
        super().__init__("stopped by a signal before the capture began: nothing was counted")


@contextlib.contextmanager
def stop_signals_caught() -> Iterator[StopSignals]:
    """For a capture's whole life, from before its target is started or attached to after its cleanup: stop
    signals are counted (StopSignals) and none raises an exception inside the load, a libbpf callback or the
    cleanup. On leaving, the old handlers are back and a signal the capture did not take (it came before the
    counting began) is raised again through them: the run ends as any stopped run does, in one line, with
    nothing left loaded or held."""
    stop = StopSignals()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    old = swap_handlers({s: stop for s in STOP_SIGNALS})
    try:
        yield stop
    finally:
        swap_handlers(old)
        if stop.count and not stop.taken and stop.signal:
            signal.raise_signal(stop.signal)


def wait_forwarding_signals(target: Target, notes: list[str], tick: Callable[[], None] | None = None,
                            stop: StopSignals | None = None) -> None:
    """Wait for the target to end. A first SIGINT, SIGTERM or SIGHUP goes to a started program (counting goes
    on until it ends) or, with -p, ends the counting and leaves the process running; a second one kills a
    started program. Either way the counts made until then are kept and printed. `stop`: the capture's own
    (stop_signals_caught()), whose signals from before the wait count here; without one, the wait catches its
    own.

    :returns: None once the target has ended or is let go; ``notes`` says what was done. Raises nothing of its own."""
    if stop is None:
        with stop_signals_caught() as own:
            own.taken = True
            _wait(target, notes, tick, own)
        return
    stop.taken = True
    _wait(target, notes, tick, stop)


def _wait(target: Target, notes: list[str], tick: Callable[[], None] | None, stop: StopSignals) -> None:
    forwarded = False
    while True:
        if stop.count:
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
        if wait_for_end(target, 0.2):
            return
        if tick:
            tick()


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
