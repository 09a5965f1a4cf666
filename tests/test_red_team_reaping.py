"""Red team, second round (issue 28, class 12): a stop signal landing as a spawned target is reaped.

Ctrl-C (or timeout(1)'s SIGTERM) reaches the whole process group: the traced program dies, and the signal's
handler in pagefault ran right after waitpid() had reaped it but before its status was kept; the status was
lost and the next poll failed with ECHILD, printed as 'pagefault: No child processes' (seen 1 in ~5 runs of
`timeout 8 pagefault journey -- PROG`). Here the signal is made to land exactly there: it is taken by another
thread while the main thread, which blocks it, waits; Python runs the handler in the main thread as soon as
the wait returns."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time

import pytest

from pagefault.capture.runner import spawn_held


class Stopped(BaseException):
    pass


def _raise(_signum, _frame):
    raise Stopped()


def test_a_stop_signal_during_the_wait_loses_no_status_and_no_child():
    target = spawn_held(["sh", "-c", "sleep 0.4; exit 3"], own_program=True)
    target.release()
    old = signal.signal(signal.SIGTERM, _raise)
    sender = threading.Thread(target=lambda: (time.sleep(0.1), os.kill(os.getpid(), signal.SIGTERM)))
    sender.start()     # before the main thread blocks SIGTERM: the sender takes it, the main thread runs the handler
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        with pytest.raises(Stopped):
            target.wait()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
        sender.join()
        signal.signal(signal.SIGTERM, old)
    try:
        assert target.poll() is False        # ECHILD was raised here
        assert target.describe_exit() == "exited with status 3"
        target.end()
        target.wait()
    finally:
        if target.status is None:      # the old code lost the child: there is nothing left to reap
            with contextlib.suppress(OSError):
                os.kill(target.pid, signal.SIGKILL)
                os.waitpid(target.pid, 0)
