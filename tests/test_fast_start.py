"""The fixed cost of `pagefault trace --summary-only` (issue 30: the whole command ≤ 1.3× the untraced program):
what its start imports, and how `python -m pagefault` ends. Each test fails on the code before the change it
guards."""

import os
import subprocess
import sys
import textwrap

import pytest

from pagefault.capture import perf_event
from pagefault.decode.arch import Arch, arch_of_machine
from pagefault.decode.arch_interface import arch_interface


@pytest.mark.parametrize("arch", list(Arch))
def test_the_system_call_numbers_perf_event_reads_are_the_arch_interfaces(arch):
    # perf_event keeps its own table over every Arch so that opening the kernel's fault counters imports no decoder
    assert perf_event.NR_PERF_EVENT_OPEN[arch] == arch_interface(arch).nr_perf_event_open


@pytest.mark.parametrize("machine", ["x86_64", "aarch64"])
def test_each_machine_opens_perf_events_with_its_own_number(machine, monkeypatch):
    monkeypatch.setattr(perf_event.os, "uname", lambda: os.uname_result(("Linux", "h", "r", "v", machine)))
    perf_event._nr_perf_event_open.cache_clear()
    try:
        assert perf_event._nr_perf_event_open() == arch_interface(arch_of_machine(machine)).nr_perf_event_open
    finally:
        perf_event._nr_perf_event_open.cache_clear()


def _engine_skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "counting in the kernel needs root"
    from pagefault.capture.kernel_counts import engine_problem
    return engine_problem("fault_count")


def test_a_summary_only_trace_imports_no_decoder_while_it_runs():
    # the kernel's fault counters were opened through the Arch interface (every decoder of both architectures,
    # ~20 ms of a ~180 ms command) for one system-call number; the run itself is checked here, not only the imports
    # of its modules (tests/test_speed_paths.py)
    reason = _engine_skip_reason()
    if reason:
        pytest.skip(reason)
    code = textwrap.dedent("""
        import sys
        from pagefault.cli import main
        status = main(["trace", "--summary-only", "-q", "--json", "--summary", "-", "--", "/bin/true"])
        print("DECODERS", sorted(m for m in sys.modules if m.startswith("pagefault.decode.")), file=sys.stderr)
        sys.exit(status)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert '"faults"' in done.stdout
    loaded = eval(done.stderr.split("DECODERS", 1)[1])
    # the two the summary-only path uses (DecodeError, to_jsonable for --json), as test_speed_paths allows
    assert set(loaded) <= {"pagefault.decode.arch", "pagefault.decode.bits"}, loaded


RUN_AND_END = textwrap.dedent("""
    import atexit, sys, threading, time
    from pagefault.__main__ import _exit_without_teardown
    def late():
        time.sleep(0.3)
        print("the thread ended")
    threading.Thread(target=late).start()
    atexit.register(lambda: print("atexit ran"))
    class Cycle:
        def __del__(self):
            print("a cycle's __del__ ran")
    c = Cycle(); c.me = c; del c
    sys.stdout.write("unflushed output")   # no newline: still in the buffer
    print(" and its status", file=sys.stderr)
    _exit_without_teardown(5)
""")


def test_python_m_pagefault_ends_as_sys_exit_would_without_the_interpreters_teardown():
    # threads waited for, atexit functions run (safe_paths removes its temporary directories there), cyclic
    # garbage finalised, buffered output flushed, the status kept
    buffered = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}   # standard output buffered, as usual
    done = subprocess.run([sys.executable, "-c", RUN_AND_END], capture_output=True, text=True, timeout=30, env=buffered)
    assert done.returncode == 5
    assert sorted(done.stdout.replace("unflushed output", "").splitlines()) == [
        "a cycle's __del__ ran", "atexit ran", "the thread ended"]
    assert "unflushed output" in done.stdout
    assert done.stderr == " and its status\n"


def test_under_a_profiler_python_m_pagefault_ends_the_ordinary_way(tmp_path):
    # cProfile (and coverage) write their results at the interpreter's exit: os._exit would lose them
    out = tmp_path / "profile"
    done = subprocess.run([sys.executable, "-m", "cProfile", "-o", str(out), "-m", "pagefault", "decode", "error-code",
                           "0x6"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "user-mode write" in done.stdout
    assert out.stat().st_size > 0


def test_python_m_pagefault_keeps_its_exit_status_and_output_through_a_pipe():
    done = subprocess.run([sys.executable, "-m", "pagefault", "decode", "error-code", "0x6"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and "user-mode write" in done.stdout
    refused = subprocess.run([sys.executable, "-m", "pagefault", "no-such-command"], capture_output=True, text=True,
                             timeout=60)
    assert refused.returncode == 2 and refused.stderr.startswith("pagefault: ")


def test_naming_counted_stacks_imports_no_recording_summary():
    # trace -g counted in the kernel imports journey.fault_stacks after the program has ended, to name its stacks:
    # the recording's summary (classifier, GFP decoding; ~20 ms) is not needed there
    code = ("import sys\nimport pagefault.journey.fault_stacks\n"
            "print('pagefault.journey.trace_summary' in sys.modules, 'pagefault.journey.fault_classes' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_the_exec_bit_the_stacks_test_is_mmaps():
    import mmap

    from pagefault.journey import fault_stacks, trace_summary
    assert fault_stacks.PROT_EXEC == trace_summary.PROT_EXEC == mmap.PROT_EXEC
