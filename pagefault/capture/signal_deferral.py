"""Stop signals held off across a few lines that must not be cut: a libbpf call that calls back into Python, an
output file's creation and naming. A module with no imports of pagefault's own, so that the lowest capture
modules (safe_paths, libbpf) can use it without importing the tracer."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def swap_handlers(handlers: dict[int, object]) -> dict[int, object]:
    """Install `handlers` with those signals blocked meanwhile, so that no signal lands between two of the
    swaps (the old handler raising there left the others swapped for good); returns the handlers replaced."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, handlers)
    try:
        return {s: signal.signal(s, h) for s, h in handlers.items()}   # type: ignore[arg-type]
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


@contextlib.contextmanager
def signals_deferred(signals: tuple[int, ...] = STOP_SIGNALS) -> Iterator[None]:
    """Inside, a stop signal is only noted; on leaving, the old handlers are back and each signal noted is
    raised again through them. Used around every libbpf call that may call back into Python (its log): a
    handler raising there (the CLI's Terminated, KeyboardInterrupt) is swallowed by ctypes ('Exception ignored
    on calling ctypes callback function'), the signal was lost, and `trace -p` counted on until its target
    ended. Outside the main thread (where Python runs no handler) nothing is changed.

    :yields: once, with the signals deferred; on leaving raises what the old handlers raise for a signal noted."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    seen: list[int] = []
    old = swap_handlers({s: (lambda signum, _frame: seen.append(signum)) for s in signals})
    try:
        yield
    finally:
        swap_handlers(old)
        for signum in dict.fromkeys(seen):
            signal.raise_signal(signum)
