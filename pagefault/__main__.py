import sys


def _exit_without_teardown(status: int) -> None:
    """End the process as sys.exit(status) would, without tearing the interpreter down module by module.

    Python's finalisation (clearing ~250 modules' globals, one object at a time) took ~10 ms of CPU after
    `pagefault trace --summary-only` had printed its summary: a twentieth of the command's fixed cost, paid after
    the traced program had ended (bench/summary_only.py). Everything finalisation would do that anyone can see is
    done first, in its order: threads still running are waited for (tracer.py closes perf events in threads), the
    atexit functions run (safe_paths removes its temporary directories there), cyclic garbage is collected (an
    object's __del__ runs as it would have), and standard output and error are flushed. Where a flush fails (the
    reader of a pipe has gone), or a profiler or tracer is watching (cProfile, coverage: they write their
    results at the interpreter's exit), the ordinary exit is taken, as before."""
    import os
    if sys.getprofile() is not None or sys.gettrace() is not None:
        sys.exit(status)
    if "threading" in sys.modules:
        import threading
        for thread in threading.enumerate():
            if thread is not threading.main_thread() and not thread.daemon:
                thread.join()
    import atexit
    import gc
    atexit._run_exitfuncs()
    gc.collect()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        sys.exit(status)
    os._exit(status)


def entry() -> None:
    """`python -m pagefault` and the installed `pagefault` command: cli.main(), its status the process's, without
    the interpreter's teardown. A Ctrl-C or SIGTERM while the CLI is still being imported (before cli.main
    installs its handlers: ~0.1 s of imports) ends in one line with the signal's status, not in a traceback of
    the import that it happened to interrupt."""
    try:
        import signal  # inside the try: importing signal itself takes a few ms (its enums)
        # until cli.main takes over: SIGTERM as an exception too, so that both end here the same way
        signal.signal(signal.SIGTERM, _raise_terminated)
        from .cli import main
        signal.signal(signal.SIGTERM, signal.SIG_DFL)   # cli.main installs its own first thing
    except KeyboardInterrupt:
        _stopped_while_starting("SIGINT", 2)
    except _Terminated:
        _stopped_while_starting("SIGTERM", 15)
    _exit_without_teardown(main())


class _Terminated(BaseException):
    """SIGTERM during the CLI's import."""


def _raise_terminated(_signum, _frame) -> None:
    raise _Terminated


def _stopped_while_starting(name: str, number: int) -> None:
    print(f"pagefault: stopped by {name} while starting; nothing was traced", file=sys.stderr)
    sys.exit(128 + number)


if __name__ == "__main__":
    entry()
