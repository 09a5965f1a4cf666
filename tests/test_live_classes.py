"""Live: every fault of a program with known faults is classified, and the counts are the known ones (issue 16)."""

import re
from collections import Counter

import pytest

from pagefault.capture.recording import load_recording
from pagefault.capture.tracer import TraceOptions, record
from pagefault.journey.fault_classes import SPECIAL_MAPPINGS
from pagefault.journey.fault_classes import FaultClass as C
from pagefault.journey.trace_summary import classify_recording, recording_columns, summarize

pytestmark = pytest.mark.live
LINE = re.compile(r"^(\w+) start=0x([0-9a-f]+) pages=(\d+) expect=(\d+)(?: child=(\d+))?$")


@pytest.fixture(scope="module", params=[False, True], ids=["no-g", "with-g"])
def traced(request, can_trace, cbin, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("classes")
    exe = cbin("fault_kinds")
    with open(tmp / "out", "w") as f:
        record(TraceOptions(argv=[str(exe), str(tmp)], output=tmp / "t.pfrec", target_stdout=f.fileno(),
                            callchain=request.param))
    regions = {}
    for line in (tmp / "out").read_text().splitlines():
        m = LINE.match(line)
        assert m, line
        regions[m.group(1)] = (int(m.group(2), 16), int(m.group(3)), int(m.group(4)), int(m.group(5) or 0))
    rec = load_recording(tmp / "t.pfrec")
    addresses, tids, times, result = classify_recording(rec)
    return regions, addresses, tids, result, rec, times


def mmap_windows(rec) -> list[tuple[int, int, int]]:
    """(time, start, end) of every mapping the program's mmap calls returned, in time order: each
    sys_exit_mmap paired with its thread's sys_enter_mmap for the length."""
    columns, names, fields, _comms = recording_columns(rec)
    enter, leave = names.index("syscalls:sys_enter_mmap"), names.index("syscalls:sys_exit_mmap")
    lengths = iter(fields[names[enter]]["len"].tolist())
    returns = iter(fields[names[leave]]["ret"].tolist())
    pending: dict[int, int] = {}
    windows = []
    for event, tid, time in zip(columns["event"].tolist(), columns["tid"].tolist(), columns["time"].tolist()):
        if event == enter:
            pending[tid] = next(lengths)
        elif event == leave:
            ret, length = next(returns), pending.pop(tid, 0)
            if ret < (1 << 63) and length:           # not a -errno
                windows.append((time, ret, ret + length))
    return windows


def region_faults(traced, region, tid=None) -> list[tuple[C, str]]:
    """The (class, si_code) of each fault in the test's own region: inside its pages, after the mmap that
    made it (an address can have held another mapping earlier: ld.so maps /etc/ld.so.cache and unmaps it
    before main runs), and of the given thread."""
    regions, addresses, tids, result, rec, times = traced
    start, pages, _expect, _child = regions[region]
    end = start + pages * 4096
    made = [t for t, lo, hi in mmap_windows(rec) if lo <= start < hi]
    since = made[-1] if made else 0          # no mmap made it (the stack grows from exec on): from the start
    return [(c, d) for a, t, when, c, d in zip(addresses.tolist(), tids.tolist(), times.tolist(), result.classes,
                                                result.detail)
            if start <= a < end and when >= since and (tid is None or t == tid)]


def classes_in(traced, region, tid=None):
    return Counter(c for c, _d in region_faults(traced, region, tid))


def test_a_region_is_told_apart_from_an_earlier_mapping_at_its_address(traced):
    """The seam the class tests count through: every region but the stack was made by an mmap the
    recording holds, and the faults kept are the ones after it."""
    windows = mmap_windows(traced[4])
    for name, (start, _pages, _expect, _child) in traced[0].items():
        if name != "stack":
            assert any(lo <= start < hi for _t, lo, hi in windows), name


def test_fresh_anonymous_pages(traced):
    assert classes_in(traced, "anon") == {C.ANON_NEW: 32}


def test_zero_page_reads_then_copies_on_write(traced):
    assert classes_in(traced, "zero") == {C.ZERO_PAGE: 16, C.COW_COPY: 16}


def test_fork_then_write_in_the_child_and_the_parent(traced):
    regions = traced[0]
    child = regions["fork"][3]
    assert classes_in(traced, "fork", tid=child) == {C.COW_COPY: 8}
    parent = classes_in(traced, "fork")
    parent.subtract(classes_in(traced, "fork", tid=child))
    assert parent[C.ANON_NEW] == 8
    # the parent's second writes: reuse where its page was exclusive again, copy where a reference lingered
    assert parent[C.COW_REUSE] + parent[C.COW_COPY] == 8 and sum(parent.values()) == 16


def test_a_cold_file_is_read_from_disk_page_by_page(traced):
    assert classes_in(traced, "file") == {C.FILE_MAJOR: 12}


def test_a_huge_page(traced):
    import pathlib
    if "[never]" in pathlib.Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text():
        pytest.skip("THP is off here")
    assert classes_in(traced, "thp") == {C.THP: 1}


def test_stack_growth(traced):
    assert classes_in(traced, "stack") == {C.STACK_GROWTH: 24}


def test_sigsegv_with_its_code(traced):
    assert region_faults(traced, "segv") == [(C.SIGSEGV, "SEGV_ACCERR")]


def test_the_summary_breaks_faults_down_by_class_mapping_and_site(traced):
    summary = summarize(traced[4])
    by_class = {cls: n for cls, n, _how in summary.by_class}
    assert by_class["anonymous new page"] >= 32 + 8 and by_class["file read from disk"] >= 12
    assert all(how for _c, _n, how in summary.by_class)
    assert any(cls == "anonymous new page" and ":main+" in site for cls, _m, site, _n in summary.class_breakdown)


def test_count_mode_counts_the_same_classes_in_the_kernel(can_trace, cbin, tmp_path):
    """trace without -o counts in BPF maps; the classes of the known faults come out as a recording's do."""
    import json
    import subprocess
    import sys
    from pagefault.capture.kernel_counts import engine_problem
    if engine_problem():
        pytest.skip(engine_problem())
    exe = cbin("fault_kinds")
    r = subprocess.run([sys.executable, "-m", "pagefault", "trace", "-q", "--json", "--summary", "-", "--", str(exe),
                        str(tmp_path)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout[r.stdout.index("{\n"):])
    assert s["tier"] == "bpf-counts" and "no event was streamed" in s["provenance"]
    classes = {c: n for c, n, _how in s["by_class"]}
    assert classes["stack growth"] == 24 and classes["THP"] == 1 and classes["SIGSEGV"] == 1
    assert classes["file read from disk"] >= 12 and classes["zero page"] >= 16
    assert classes["anonymous new page"] >= 32 + 8 and classes["COW copy"] >= 16 + 8
    assert sum(classes.values()) == s["faults"]
    assert not list(tmp_path.glob("*.pfrec")), "count mode wrote a recording"


def test_the_kernels_special_mappings_are_their_own_class(traced):
    """ld.so reads the vDSO's ELF header and the clock code reads [vvar]: those faults map pages the kernel
    already has (no zero page, nothing read from disk), whatever else the thread did before its next fault."""
    regions, addresses, tids, result, rec, times = traced
    special = [(m["start"], m["end"]) for m in rec.meta["maps"] if m["path"] in SPECIAL_MAPPINGS]
    seen = [c for a, c in zip(addresses.tolist(), result.classes) if any(lo <= a < hi for lo, hi in special)]
    assert seen and set(seen) == {C.SPECIAL}


def test_major_faults_are_counted_as_the_kernel_counts_them(can_trace, cbin, tmp_path):
    """A cold file read in order: the kernel reads ahead, so few faults are major. The faults classed "read
    from disk" are exactly the kernel's own major-fault count for the program (its maj_flt, counted from
    exec); the others that read pages are readahead, minor (issue 26: 2 said where the kernel counted 1)."""
    out = tmp_path / "out"
    with open(out, "w") as f:
        record(TraceOptions(argv=[str(cbin("file_sequential")), str(tmp_path)], output=tmp_path / "t.pfrec",
                            target_stdout=f.fileno()))
    rec = load_recording(tmp_path / "t.pfrec")
    summary = summarize(rec)
    by_class = {c: n for c, n, _how in summary.by_class}
    assert by_class.get(C.FILE_MAJOR.value, 0) == summary.kernel_counts["major-faults"], (by_class, summary.kernel_counts)


def test_the_summary_has_a_row_per_process(traced):
    """fault_kinds forks a child that writes 8 pages: the summary counts the parent's and the child's faults
    apart, and together they are every fault (issue 29: gcc's cc1, as and ld looked like duplicated rows)."""
    regions, _a, _t, _r, rec, _times = traced
    summary = summarize(rec)
    rows = {pid: (comm, n) for pid, comm, n in summary.by_process}
    child = regions["fork"][3]
    assert rec.meta["pid"] in rows and child in rows
    assert rows[child][1] >= 8 and rows[child][0] == rows[rec.meta["pid"]][0] == "fault_kinds"
    assert sum(n for _c, n in rows.values()) == summary.faults
