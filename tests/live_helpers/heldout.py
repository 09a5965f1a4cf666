"""The held-out programs (tests/c/heldout.c) traced and held to their construction and to the kernel's own
counts: shared by the live test (tests/test_live_heldout.py) and the kernel matrix (scripts/matrix_checks.py).

A recording (-o) of one mode: the classes of the faults inside the program's region, by construction; the
trace's total equal to the kernel's page-faults software event counted from exec (as perf stat counts), and
the faults classed "file read from disk" equal to the kernel's major-faults count."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from pagefault.capture.recording import load_recording
from pagefault.capture.tracer import TraceOptions, record
from pagefault.journey.fault_classes import FaultClass as C
from pagefault.journey.trace_summary import classify_recording, summarize

SOURCE = Path(__file__).resolve().parent.parent / "c" / "heldout.c"
LINE = re.compile(r"^(\w+) start=0x([0-9a-f]+) pages=(\d+) expect=(-?\d+)$")
DISK = C.FILE_MAJOR
# mode → the classes of the faults inside its region, by construction (None: as many reads from disk as the
# kernel's readahead makes, the rest page-cache hits)
RECORDED = {
    "anon": {C.ANON_NEW: 64}, "zero": {C.ZERO_PAGE: 64}, "fork": {C.ANON_NEW: 16, C.COW_COPY: 16},
    "readfresh": {C.ANON_NEW: 64}, "brk": {C.ANON_NEW: 64}, "privwrite": {C.COW_COPY: 64},
    "cachedseq": {C.FILE_HIT: 16}, "cachedrand": {C.FILE_HIT: 16}, "uncachedrand": {DISK: 32},
    "segv": {C.SIGSEGV: 4}, "sigbus": {C.SIGBUS: 4}, "thp": {C.THP: 2}, "populate": {}, "mlock": {},
    "threads": {C.ANON_NEW: 64}, "uncachedseq": None, "fixedfile": {C.FILE_HIT: 16},
}


# The modes that map or read a file. The cached ones need the file's pages to stay in the page cache once
# written: a disk's file system keeps them, and so does tmpfs (its pages are the cache); 9p without a cache (the
# matrix guests' root) writes through to the host and keeps none, so their files go to a tmpfs there. The cold
# ones need a file whose clean pages can be dropped and read back from a store (a major fault): a disk's file
# system, or 9p, whose pages are read from the host; tmpfs cannot drop its pages.
CACHED_FILE_MODES = frozenset({"readfresh", "privwrite", "cachedseq", "cachedrand", "sigbus", "fixedfile"})
COLD_FILE_MODES = frozenset({"uncachedseq", "uncachedrand"})
FILE_MODES = CACHED_FILE_MODES | COLD_FILE_MODES
DISK_FILE_SYSTEMS = ("ext2", "ext3", "ext4", "xfs", "btrfs")
COLD_FILE_SYSTEMS = DISK_FILE_SYSTEMS + ("9p",)
CACHED_FILE_SYSTEMS = DISK_FILE_SYSTEMS + ("tmpfs",)
TMPFS_CANDIDATES = ("/dev/shm", "/run", "/tmp")


def file_system(path: Path) -> str:
    """The type of the file system mounted where `path` is, as the kernel's mount table names it ("ext4",
    "tmpfs", "9p"). Not statfs's (stat -f): 9p passes on the host's, and called the guests' root ext4."""
    types = subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "-T", str(path)], capture_output=True, text=True,
                           check=True).stdout.split()
    return types[-1]   # mounted over another at the same place (one line each): the last, the one seen


def file_dir(mode: str, work: Path) -> tuple[Path | None, str]:
    """Where `mode` makes its file (`work` when its file system does what the mode needs, else a new directory
    on a tmpfs), with why; None where no file system here can (a cold file with `work` on a tmpfs)."""
    fs = file_system(work)
    if mode not in FILE_MODES or (mode in CACHED_FILE_MODES and fs in CACHED_FILE_SYSTEMS) or (
            mode in COLD_FILE_MODES and fs in COLD_FILE_SYSTEMS):
        return work, fs
    if mode in COLD_FILE_MODES:
        return None, f"{work} is on {fs}, which cannot drop a file's pages and read them back"
    for candidate in TMPFS_CANDIDATES:
        if Path(candidate).is_dir() and file_system(Path(candidate)) == "tmpfs":
            return Path(tempfile.mkdtemp(prefix="heldout-", dir=candidate)), f"tmpfs ({work} is on {fs})"
    return None, f"{work} is on {fs}, which keeps no page cache of its own, and no tmpfs is mounted"


def build(out: Path) -> Path:
    """heldout.c compiled into `out` (rebuilt when the source is newer)."""
    exe = out / "heldout"
    if not exe.exists() or exe.stat().st_mtime < SOURCE.stat().st_mtime:
        cc = shutil.which("cc") or shutil.which("gcc")
        subprocess.run([cc, "-O1", "-g", "-pthread", "-o", str(exe), str(SOURCE)], check=True)
    return exe


def region(stdout: str) -> tuple[str, int, int, int]:
    m = LINE.match(stdout.strip().splitlines()[-1])
    if not m:
        raise AssertionError(f"no region line in {stdout!r}")
    return m.group(1), int(m.group(2), 16), int(m.group(3)), int(m.group(4))


def check_recorded(exe: Path, mode: str, work: Path) -> tuple[bool, str]:
    """Record `mode`, and whether its region's classes and the totals are what they must be, with the numbers."""
    out = work / f"{mode}.out"
    files, _why = file_dir(mode, work)
    if files is None:
        raise ValueError(f"{mode} cannot run here: {_why}")
    try:
        with open(out, "w") as f:
            record(TraceOptions(argv=[str(exe), mode, str(files)], output=work / f"{mode}.pfrec",
                                target_stdout=f.fileno(), force=True))
    finally:
        if files != work:
            shutil.rmtree(files, ignore_errors=True)
    return judge_recorded(mode, work)


def judge_recorded(mode: str, work: Path) -> tuple[bool, str]:
    """check_recorded's verdict on a recording of `mode` already in `work` (MODE.pfrec and the program's output
    MODE.out): a guest's, read anywhere, as the classes are decided from the recording alone."""
    out = work / f"{mode}.out"
    _name, start, pages, _expect = region(out.read_text())
    rec = load_recording(work / f"{mode}.pfrec")
    addresses, _tids, _times, result = classify_recording(rec)
    inside = Counter(c for a, c in zip(addresses.tolist(), result.classes) if start <= a < start + pages * 4096)
    s = summarize(rec)
    kernel = s.kernel_counts
    disk = next((n for c, n, _how in s.by_class if c == DISK.value), 0)
    ok = s.faults == kernel.get("page-faults") and disk == kernel.get("major-faults")
    want = RECORDED[mode]
    if want is None:
        # the region's reads from disk are some of the program's (the loader's own are too, on 9p: it reads
        # from the host at every fault of a library's page not yet cached), and all of them the kernel's
        ok = ok and 1 <= inside[DISK] <= kernel["major-faults"] and set(inside) <= {DISK, C.FILE_HIT, C.FILE_READAHEAD}
    else:
        ok = ok and dict(inside) == want
    got = ", ".join(f"{c.value} {n}" for c, n in sorted(inside.items(), key=lambda x: x[0].value)) or "none"
    return ok, (f"{mode}: region {got} (built: {', '.join(f'{c.value} {n}' for c, n in (want or {}).items()) or 'none'}"
                f"); {s.faults} faults, the kernel's {kernel.get('page-faults')}; {disk} read from disk, the kernel's "
                f"major {kernel.get('major-faults')}")


# The count in the kernel (trace without -o): its rows are (class, mapping), so a program is held to its
# construction by the rows of the mapping its region is alone in, or by a class only it makes.
COUNTED_MODES = ("anon", "zero", "segv", "sigbus", "thp", "populate", "mlock", "threads", "fork", "uncachedrand",
                 "uncachedseq", "cachedseq", "cachedrand", "privwrite", "brk", "readfresh")
COUNTED_IN_GUESTS = ("uncachedrand", "uncachedseq", "cachedseq", "privwrite", "readfresh", "sigbus")
COUNTED_ROWS = {"brk": ("[heap]", {C.ANON_NEW: 64}), "uncachedrand": ("heldout-uncachedrand.dat", {DISK: 32}),
                "cachedseq": ("heldout-cachedseq.dat", {C.FILE_HIT: 16}),
                "cachedrand": ("heldout-cachedrand.dat", {C.FILE_HIT: 16}),
                "privwrite": ("heldout-privwrite.dat", {C.COW_COPY: 64})}
COUNTED_CLASSES = {"segv": (C.SIGSEGV, 4), "sigbus": (C.SIGBUS, 4), "thp": (C.THP, 2)}


def count_in_kernel(exe: Path, mode: str, files: Path, summary: Path) -> tuple[dict, str]:
    """`pagefault trace` of `mode` (its file in `files`), counted in the kernel: the summary's JSON and the
    program's output."""
    r = subprocess.run([sys.executable, "-m", "pagefault", "trace", "-q", "--json", "--summary", str(summary), "--",
                        str(exe), mode, str(files)], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    if r.returncode:
        raise AssertionError(f"trace of {mode} failed ({r.returncode}): {r.stderr.strip()[-300:]}")
    return json.loads(summary.read_text()), r.stdout


def counts_from_exec(s: dict) -> bool:
    """The count started where the kernel's does (sched_prepare_exec, 6.10 on); before, exec's own faults on the
    new image are the kernel's and not the count's (the documented difference, kernel_counts.WITHOUT)."""
    # whatever the hook's variant (raw_tp, tp_btf, tracepoint): the note names the variant the count took, or
    # none; a check tied to one variant's name skipped every test here when the counter moved to raw_tp
    return any(n.startswith("hook sched_prepare_exec: ") and not n.startswith("hook sched_prepare_exec: none")
               for n in s["notes"])


def counted_problems(s: dict, mode: str) -> list[str]:
    """What in a count in the kernel of `mode` differs from its construction or from the kernel's own counts."""
    problems = []
    classes = {c: n for c, n, _how in s["by_class"]}
    kernel = s["kernel_counts"]
    if counts_from_exec(s) and s["faults"] != kernel["page-faults"]:
        problems.append(f"{s['faults']} faults, the kernel's {kernel['page-faults']}")
    # a read from disk is a fault whose own page was added to the page cache: the kernel's major faults, not
    # readahead of other pages (uncachedseq) nor a system call's write() filling the cache (the cached modes).
    # Without sched_prepare_exec, exec's own faults are not counted, and on 9p one of them reads from the host.
    disk = classes.get(DISK.value, 0)
    if disk != kernel["major-faults"] if counts_from_exec(s) else disk > kernel["major-faults"]:
        problems.append(f"{disk} read from disk, the kernel's major {kernel['major-faults']}")
    if mode in COUNTED_CLASSES:
        cls, n = COUNTED_CLASSES[mode]
        if classes.get(cls.value) != n:
            problems.append(f"{cls.value} {classes.get(cls.value)}, built {n}")
    if mode in COUNTED_ROWS:
        mapping, expected = COUNTED_ROWS[mode]
        rows = {c: n for c, m, _site, n in s["class_breakdown"] if m == mapping}
        if rows != {c.value: n for c, n in expected.items()}:
            problems.append(f"{mapping}: {rows}, built {({c.value: n for c, n in expected.items()})}")
    return problems


def check_counted(exe: Path, mode: str, work: Path) -> tuple[bool, str]:
    """Count `mode` in the kernel, and whether it is as built and as the kernel counted, with the numbers."""
    files, why = file_dir(mode, work)
    if files is None:
        return True, f"{mode} (counted): not run, {why}"
    try:
        s, _out = count_in_kernel(exe, mode, files, work / f"{mode}.count.json")
    finally:
        if files != work:
            shutil.rmtree(files, ignore_errors=True)
    if s["tier"] != "bpf-counts":
        return False, f"{mode} (counted): not counted in the kernel: {s['notes'][-1]}"
    problems = counted_problems(s, mode)
    kernel = s["kernel_counts"]
    allowance = "" if counts_from_exec(s) else " (no sched_prepare_exec: totals not compared)"
    return not problems, (f"{mode} (counted): {s['faults']} faults, the kernel's {kernel['page-faults']}{allowance}; "
                          f"major {kernel['major-faults']}" + ("; " + "; ".join(problems) if problems else ""))
