"""The reconciliation note says when the kernel's own count started: from exec for a command the trace ran,
from the attach for -p (issue 26: the -p note said "counted from exec", which it was not)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pagefault.journey.count_summary import TraceSummary, reconcile


def _summary() -> TraceSummary:
    return TraceSummary(["prog"], 42, "bpf-counts", "exited 0", 1.0, 100, 0, None, 0, 0)


def test_a_spawned_command_is_counted_from_exec() -> None:
    s = _summary()
    reconcile(s, {"page-faults": 100, "major-faults": 2}, 100)
    assert "counted from exec" in s.notes[-1] and "the same as traced here" in s.notes[-1]


def test_an_attached_process_is_counted_from_the_attach_not_from_exec() -> None:
    s = _summary()
    reconcile(s, {"page-faults": 100, "major-faults": 0}, 100, from_exec=False)
    assert "from exec" not in s.notes[-1]
    assert "counted from the attach on" in s.notes[-1] and "threads already running" in s.notes[-1]


def test_an_attached_process_with_more_traced_names_the_threads_the_counters_miss() -> None:
    s = _summary()
    reconcile(s, {"page-faults": 60, "major-faults": 0}, 100, from_exec=False)
    assert "-40 against the 100 traced" in s.notes[-1] and "threads already running at the attach" in s.notes[-1]


@pytest.mark.live
def test_trace_p_says_its_counts_start_at_the_attach(can_trace, tmp_path) -> None:
    if os.geteuid() != 0:
        pytest.skip("counting in the kernel needs root")
    # a process that waits for the attach, then touches 64 fresh pages and exits
    code = ("import mmap, sys, time\nsys.stdout.write('ready\\n'); sys.stdout.flush(); time.sleep(2)\n"
            "m = mmap.mmap(-1, 64 * 4096)\nfor i in range(64): m[i * 4096] = 1\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "ready\n"
        trace = subprocess.Popen([sys.executable, "-m", "pagefault", "trace", "-q", "--json", "--summary",
                                  str(tmp_path / "s.json"), "-p", str(proc.pid)], stderr=subprocess.PIPE, text=True)
        proc.wait(timeout=30)          # reaped here, so the trace sees it gone
        _out, err = trace.communicate(timeout=60)
        assert trace.returncode == 0, err
    finally:
        proc.kill()
        proc.wait()
    s = json.loads((tmp_path / "s.json").read_text())
    if s["tier"] != "bpf-counts":
        pytest.skip(f"the faults were not counted in the kernel here: {s['notes'][-1]}")
    note = next(n for n in s["notes"] if n.startswith("the kernel's own count"))
    assert "from exec" not in note and "from the attach on" in note
    assert s["faults"] >= 64


def test_reads_from_disk_are_held_to_the_kernels_major_count() -> None:
    """Issue 26, class 4: the count's "file read from disk" is not the kernel's major-fault count; where they
    differ the summary says so, with the reason (counted with heldout cachedseq: 2 classed, 0 major)."""
    s = _summary()
    s.by_class = [("file read from disk", 2, "how"), ("file page-cache hit", 98, "how")]
    reconcile(s, {"page-faults": 100, "major-faults": 0}, 100)
    note = next(n for n in s.notes if n.startswith("2 faults classed"))
    assert "the kernel counted 0 major faults" in note and "minor faults to the kernel" in note
    s = _summary()
    s.by_class = [("file read from disk", 32, "how")]
    reconcile(s, {"page-faults": 100, "major-faults": 32}, 100)
    assert any(n.startswith("32 faults classed 'file read from disk': the kernel's own major-fault count, the same")
               for n in s.notes)
