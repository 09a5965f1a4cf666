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
from live_helpers.heldout import RECORDED, build, check_recorded, file_dir, region

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


# The counted rows are (class, mapping): the mappings the program's region is alone in.
COUNTED = {"brk": ("[heap]", {C.ANON_NEW: 64}), "uncachedrand": ("heldout-uncachedrand.dat", {DISK: 32}),
           "cachedseq": ("heldout-cachedseq.dat", {C.FILE_HIT: 16}),
           "cachedrand": ("heldout-cachedrand.dat", {C.FILE_HIT: 16}),
           "privwrite": ("heldout-privwrite.dat", {C.COW_COPY: 64})}


def _counted(heldout, mode: str, tmp_path) -> dict:
    files, why = file_dir(mode, tmp_path)
    if files is None:
        pytest.skip(why)
    r = subprocess.run([sys.executable, "-m", "pagefault", "trace", "-q", "--json", "--summary", str(tmp_path / "s.json"),
                        "--", str(heldout), mode, str(files)], capture_output=True, text=True, timeout=120)
    if files != tmp_path:
        shutil.rmtree(files, ignore_errors=True)
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / "s.json").read_text())
    if s["tier"] != "bpf-counts":
        pytest.skip(f"the faults were not counted in the kernel here: {s['notes'][-1]}")
    s["region"] = region(r.stdout)
    return s


@pytest.mark.parametrize("mode", ["anon", "zero", "segv", "sigbus", "thp", "populate", "mlock", "threads", "fork",
                                  "uncachedrand", "uncachedseq", "cachedseq", "cachedrand", "privwrite", "brk",
                                  "readfresh"])
def test_the_count_in_the_kernel_equals_the_kernels_own_and_the_construction(mode, heldout, tmp_path):
    s = _counted(heldout, mode, tmp_path)
    classes = {c: n for c, n, _how in s["by_class"]}
    if not any("sched_prepare_exec: tp_btf" in n or "sched_prepare_exec: tracepoint" in n for n in s["notes"]):
        pytest.skip("without sched_prepare_exec (before 6.10) exec's own faults on the new image are not counted")
    assert s["faults"] == s["kernel_counts"]["page-faults"], s["notes"]
    # a read from disk is a fault whose own page was added to the page cache: the kernel's major faults, not
    # readahead of other pages (uncachedseq) nor a system call's write() filling the cache (the cached modes)
    assert classes.get(DISK.value, 0) == s["kernel_counts"]["major-faults"], s["by_class"]
    if mode == "readfresh":            # read() copied into the fresh buffer: 64 faults taken in kernel mode
        assert s["kernel_mode_faults"] >= 64 and s["by_kind"]["write, not-present page, in kernel mode"] >= 64
    want = {"segv": (C.SIGSEGV, 4), "sigbus": (C.SIGBUS, 4), "thp": (C.THP, 2)}.get(mode)
    if want:
        assert classes.get(want[0].value) == want[1], classes
    if mode in COUNTED:
        mapping, expected = COUNTED[mode]
        rows = {c: n for c, m, _site, n in s["class_breakdown"] if m == mapping}
        assert rows == {c.value: n for c, n in expected.items()}, s["class_breakdown"]


@pytest.mark.parametrize("mode", ["cachedseq", "privwrite"])
def test_the_count_in_the_kernel_classes_a_cached_files_faults_as_made(mode, heldout, tmp_path):
    s = _counted(heldout, mode, tmp_path)
    mapping, expected = COUNTED[mode]
    rows = {c: n for c, m, _site, n in s["class_breakdown"] if m == mapping}
    assert rows == {c.value: n for c, n in expected.items()}, s["class_breakdown"]
    classes = {c: n for c, n, _how in s["by_class"]}
    assert classes.get(DISK.value, 0) == s["kernel_counts"]["major-faults"]


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
