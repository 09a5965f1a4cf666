"""Live, held out: programs of the kinds issue 26 names (tests/c/heldout.c), one kind of fault each, traced
as a user traces them. The faults in each program's own region are classed as the program made them, and
the trace's total is the kernel's own count for the program (its page-faults and major-faults software
events, counted from exec as `perf stat -- CMD` counts them).

Two ways of tracing: a recording (-o, every event; classes decided per fault from its events) and the
default count in the kernel (no event streamed; classes per (class, mapping) row)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from live_helpers.heldout import (
    COUNTED_MODES,
    COUNTED_ROWS,
    RECORDED,
    build,
    check_recorded,
    count_in_kernel,
    counted_problems,
    counts_from_exec,
    file_dir,
    region,
)

from pagefault.journey.fault_classes import FaultClass as C

pytestmark = pytest.mark.live
DISK = C.FILE_MAJOR


@pytest.fixture(scope="module")
def heldout(tmp_path_factory, can_trace):
    if not (shutil.which("cc") or shutil.which("gcc")):
        pytest.skip("no C compiler on this machine")
    out = tmp_path_factory.mktemp("heldout")
    os.chmod(out, 0o755)
    return build(out)


@pytest.mark.parametrize("mode", sorted(RECORDED))
def test_a_recording_classes_each_programs_faults_as_it_made_them(mode, heldout, tmp_path):
    if file_dir(mode, tmp_path)[0] is None:
        pytest.skip(file_dir(mode, tmp_path)[1])
    ok, detail = check_recorded(heldout, mode, tmp_path)
    assert ok, detail


def _counted(heldout, mode: str, tmp_path) -> dict:
    files, why = file_dir(mode, tmp_path)
    if files is None:
        pytest.skip(why)
    try:
        s, out = count_in_kernel(heldout, mode, files, tmp_path / "s.json")
    finally:
        if files != tmp_path:
            shutil.rmtree(files, ignore_errors=True)
    if s["tier"] != "bpf-counts":
        pytest.skip(f"the faults were not counted in the kernel here: {s['notes'][-1]}")
    s["region"] = region(out)
    return s


@pytest.mark.parametrize("mode", COUNTED_MODES)
def test_the_count_in_the_kernel_equals_the_kernels_own_and_the_construction(mode, heldout, tmp_path):
    s = _counted(heldout, mode, tmp_path)
    if not counts_from_exec(s):
        pytest.skip("without sched_prepare_exec (before 6.10) exec's own faults on the new image are not counted")
    assert not counted_problems(s, mode), (counted_problems(s, mode), s["class_breakdown"], s["notes"])
    if mode == "readfresh":            # read() copied into the fresh buffer: 64 faults taken in kernel mode
        assert s["kernel_mode_faults"] >= 64 and s["by_kind"]["write, not-present page, in kernel mode"] >= 64


@pytest.mark.parametrize("mode", ["cachedseq", "privwrite", "uncachedseq"])
def test_the_count_in_the_kernel_reads_from_disk_only_a_faults_own_page(mode, heldout, tmp_path):
    """A write() that fills the page cache after the program's last fault (cachedseq, privwrite) and readahead
    of the pages after a fault's (uncachedseq) are not reads from disk of a fault: the kernel's major faults."""
    s = _counted(heldout, mode, tmp_path)
    classes = {c: n for c, n, _how in s["by_class"]}
    assert classes.get(DISK.value, 0) == s["kernel_counts"]["major-faults"], s["class_breakdown"]
    if mode in COUNTED_ROWS:
        mapping, expected = COUNTED_ROWS[mode]
        rows = {c: n for c, m, _site, n in s["class_breakdown"] if m == mapping}
        assert rows == {c.value: n for c, n in expected.items()}, s["class_breakdown"]


def test_perf_stat_counts_what_the_trace_counts(heldout, tmp_path):
    """The same program under `perf stat -e page-faults,major-faults` and under trace: the same totals. The
    program runs without address-space randomisation from its start (setarch -R for both), so that its
    faults are the same from one run to the next."""
    perf, setarch = shutil.which("perf"), shutil.which("setarch")
    if not perf or not setarch:
        pytest.skip("perf or setarch is not installed")
    argv = [str(heldout), "uncachedrand", str(tmp_path)]
    r = subprocess.run([setarch, "-R", perf, "stat", "-x,", "-e", "page-faults,major-faults", "--"] + argv,
                       capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        pytest.skip(f"perf stat did not run here: {r.stderr.strip()[-200:]}")
    counted = {line.split(",")[2]: int(line.split(",")[0]) for line in r.stderr.splitlines()
               if line.count(",") >= 3 and line.split(",")[0].isdigit()}
    t = subprocess.run([setarch, "-R", sys.executable, "-m", "pagefault", "trace", "-q", "--json", "--summary",
                        str(tmp_path / "s.json"), "--"] + argv, capture_output=True, text=True, timeout=120)
    assert t.returncode == 0, t.stderr
    s = json.loads((tmp_path / "s.json").read_text())
    assert counted["major-faults"] == s["kernel_counts"]["major-faults"] == 32
    assert abs(counted["page-faults"] - s["faults"]) <= 1, (counted, s["faults"])
