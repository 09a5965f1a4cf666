import sys

from .cli import main


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
    """`python -m pagefault`: cli.main(), its status the process's, without the interpreter's teardown."""
    _exit_without_teardown(main())


if __name__ == "__main__":
    entry()
