"""A summary's shape (TraceSummary), its reconciliation with the kernel's own counts, and the summary of faults
counted in the kernel (capture/kernel_counts.py).

Pure, and without numpy: the summary-only count reads a few hundred counters, and numpy's import (with its BLAS
threads) would cost that command more than everything else it does in Python. A recording's summary
(journey/trace_summary.py, numpy) fills the same TraceSummary.

Counted faults are classed by fault_classes' rules (its module docstring), for the inputs a count has: no call
chains, no file index, one row per kind of fault. ``counted_class`` is those rules for one row;
tests/test_count_summary.py holds it to ``fault_classes.class_columns`` over every input a count can give.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Hashable, Sequence

from .fault_class_names import HOW, SPECIAL_MAPPINGS, FaultClass

if TYPE_CHECKING:
    from ..evidence import MapsLine

X86_PF_PROT, X86_PF_WRITE, X86_PF_USER, X86_PF_INSTR = 1, 2, 4, 16
SIGBUS, SIGSEGV = 7, 11
# a counted fault's VMA key: vm_start << 3 | kind (capture/bpf/fault_count.h)
KIND_FILE, KIND_SHARED, KIND_GROWTH = 1, 2, 4


@dataclass
class TraceSummary:
    command: list[str]
    pid: int
    tier: str
    exit: str
    duration: float
    faults: int
    allocations: int
    mmaps: int | None                 # None: not counted (the summary-only count has no mmap probe)
    lost: int | None                  # None: not known (see lost_how)
    lost_records: int
    by_kind: dict[str, int] = field(default_factory=dict)
    by_class: list[tuple[str, int, str]] = field(default_factory=list)        # (class, faults, how decided)
    class_breakdown: list[tuple[str, str, str, int]] = field(default_factory=list)  # (class, mapping, site, faults)
    by_mapping: list[tuple[str, int]] = field(default_factory=list)
    top_instructions: list[dict] = field(default_factory=list)
    kernel_paths: list[tuple[str, int]] = field(default_factory=list)
    alloc_orders: dict[int, int] = field(default_factory=dict)
    alloc_gfp: list[tuple[str, int]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    provenance: str = ""
    lost_how: str = ""                # how the lost count was found, or why it is unknown
    integrity: str = "complete"       # or "partial: …" (a recording cut short or damaged)
    kernel_mode_faults: int = 0       # faults on user addresses taken in kernel mode (inside system calls)
    kernel_counts: dict[str, int] = field(default_factory=dict)   # the kernel's own page-faults/major-faults counts
    # (pid, command, faults), most first; the command is the process's last: a process that exec'ed twice shows
    # the name of its last exec (a recording's last COMM record, a count's name kept at exec)
    by_process: list[tuple[int, str, int]] = field(default_factory=list)


KERNEL_COUNT_FROM_EXEC = ("the kernel's own count (software events page-faults/major-faults, counted from exec, "
                          "children included, as perf stat counts them)")
# -p: the counters are opened on the running task, enabled at once; perf's inherit follows only the tasks it
# creates from then on, so threads already running are not in the kernel's count (the trace follows them)
KERNEL_COUNT_FROM_ATTACH = ("the kernel's own count (software events page-faults/major-faults, counted from the "
                            "attach on: faults before it are in neither count; for the thread PID and the threads and "
                            "children it starts after the attach, not for threads already running)")


# a count without stacks keeps no faulting instruction: trace -g takes each fault's user stack, whose leaf it is
NO_CALL_SITE = "(not counted: trace -g names it)"
SUMMARY_TOP = 10   # the rows a summary keeps of a breakdown by call site (a recording's and a count's alike)


def kernel_instruction(found: tuple[str, int] | None, missing: str = "no symbols") -> str:
    """A kernel instruction as the summaries name it: its function and offset as a kallsyms lookup gave them
    (`found`), "kernel: function+0xoff"; without them, "kernel (`missing`)".

    :returns: the name; raises nothing."""
    return f"kernel: {found[0]}+0x{found[1]:x}" if found else f"kernel ({missing})"


def reconcile(summary: TraceSummary, kernel: dict | None, traced: int, unseen: str = "", *,
              from_exec: bool = True) -> None:
    """Beside the traced total, the kernel's own count for the same processes and time, and the difference
    with its reason (a note, and ``summary.kernel_counts`` for JSON). `from_exec`: the command was started by
    the trace (counted from its exec); False for -p (counted from the attach)."""
    if not kernel:
        return
    summary.kernel_counts = dict(kernel)
    counted = kernel.get("page-faults", 0)
    source = KERNEL_COUNT_FROM_EXEC if from_exec else KERNEL_COUNT_FROM_ATTACH
    _major_note(summary, kernel.get("major-faults"))
    if counted == traced:
        summary.notes.append(f"{source}: {counted} page faults ({kernel.get('major-faults', 0)} major): the same as "
                             "traced here")
        return
    if summary.integrity != "complete" or summary.lost:
        why = "events were lost or the recording is partial"
    elif counted > traced:
        why = unseen or ("faults the tracepoints did not show to this trace (on an arm64 kernel or without "
                         "exceptions:page_fault_kernel, kernel-mode faults are not traced)")
    elif not from_exec:
        why = ("traced faults the kernel's counters did not see: those of threads already running at the attach "
               "(the counters follow the thread PID and what it starts later), or faults the kernel resolved "
               "before counting them")
    else:
        why = ("traced faults the kernel did not charge: a fault the kernel resolved before counting it (a "
               "spurious fault after another CPU fixed the entry, or one on a kernel address)")
    summary.notes.append(f"{source}: {counted} page faults ({kernel.get('major-faults', 0)} major), "
                         f"{counted - traced:+d} against the {traced} traced: {why}")


def _major_note(summary: TraceSummary, major: int | None) -> None:
    """The faults classed "read from disk" held to the kernel's own major-fault count (VM_FAULT_MAJOR, the
    maj_flt it charges): where they differ, the note says by how many and why, so a class is never taken for
    the kernel's number."""
    disk = next((n for c, n, _how in summary.by_class if c == FaultClass.FILE_MAJOR.value), None)
    if major is None or disk is None and not major:
        return
    disk = disk or 0
    if disk == major:
        summary.notes.append(f"{disk} faults classed {FaultClass.FILE_MAJOR.value!r}: the kernel's own major-fault "
                             "count, the same")
    elif disk > major:
        summary.notes.append(f"{disk} faults classed {FaultClass.FILE_MAJOR.value!r}, where the kernel counted {major} "
                             f"major faults: {disk - major} saw a page-cache add the kernel did not count as their "
                             "read (minor faults to the kernel): of their own page while another thread read it in, "
                             "or, where a fault's page in its file is not known (no mapping offset or inode), any "
                             "add while it was open")
    else:
        summary.notes.append(f"{disk} faults classed {FaultClass.FILE_MAJOR.value!r}, where the kernel counted {major} "
                             f"major faults: {major - disk} major faults read no file page (a swap-in or a shared "
                             "memory page read back), or their page-cache add was not seen")


def mapping_label(path: str) -> str:
    """A mapping's name in a summary: [heap], [vdso]..., [anon] for an unnamed one, a file's base name."""
    if path.startswith("["):
        return path
    if not path or path == "//anon":
        return "[anon]"
    return path.rsplit("/", 1)[-1]


def counted_class(code: int, allocated: bool, order: int, cache_adds: int, sig: int, *, known: bool,
                  anonymous: bool, private: bool, growth: bool, special: bool) -> FaultClass:
    """The class of a counted fault: its error code, whether it made a movable allocation and its largest
    order, its page-cache adds and signal; its VMA known (or a fault below the stack: growth), anonymous,
    private, one of SPECIAL_MAPPINGS. fault_classes.class_columns' rules, in their order."""
    write, present = bool(code & X86_PF_WRITE), bool(code & X86_PF_PROT)
    file_backed = known and not anonymous
    if known and anonymous and not special:
        cache_adds = 0      # an anonymous mapping reads no file: a page-cache add is a system call's
    for taken, cls in ((sig == SIGSEGV, FaultClass.SIGSEGV), (sig == SIGBUS, FaultClass.SIGBUS),
                       (special, FaultClass.SPECIAL), (allocated and order >= 1, FaultClass.THP),
                       (cache_adds > 0, FaultClass.FILE_MAJOR), (allocated and present and write, FaultClass.COW_COPY),
                       (allocated and file_backed and write and private, FaultClass.COW_COPY),
                       (allocated and file_backed, FaultClass.FILE_HIT), (allocated and growth, FaultClass.STACK_GROWTH),
                       (allocated, FaultClass.ANON_NEW), (present and write, FaultClass.COW_REUSE),
                       (present, FaultClass.SPURIOUS), (file_backed, FaultClass.FILE_HIT),
                       (not write, FaultClass.ZERO_PAGE)):
        if taken:
            return cls
    return FaultClass.SPURIOUS


def row_class(row: Sequence[int], by_start: dict) -> FaultClass:
    """The class of a row of counts (error code, allocated, order, page-cache add, signal, si_code, vma key, ...),
    its VMA's mapping found in `by_start` (start → MapsLine) to tell a special mapping."""
    code, alloc, order, cache, sig, _sig_code, vma = (int(v) for v in row[:7])
    start, kind = vma >> 3, vma & 7
    growth = bool(kind & KIND_GROWTH)
    m = by_start.get(start)
    return counted_class(code, alloc > 0, order, cache, sig, known=start != 0 or growth, anonymous=not kind & KIND_FILE,
                         private=not kind & KIND_SHARED, growth=growth,
                         special=m is not None and m.path in SPECIAL_MAPPINGS)


def summarize_counts(rows: Sequence[Sequence[int]], maps: list[MapsLine], command: list[str], pid: int,
                     exit_text: str, duration: float, allocations: int = 0, total: int | None = None,
                     process_names: dict[int, str] | None = None,
                     maps_by_process: dict[int, list[MapsLine]] | None = None,
                     sited_rows: Sequence[tuple[Sequence[int], Hashable]] | None = None,
                     name_site: Callable[[Hashable], str] = str) -> TraceSummary:
    """A summary from the kernel's counters (capture/kernel_counts.py): rows of (error code, allocated, order,
    page-cache add, signal, si_code, vm_start << 3 | kind, faults[, tgid]); kind 1 file, 2 shared, 4 stack growth.
    The error code's user bit (X86_PF_USER, set by the CPU) tells the faults taken in user mode from those
    taken in kernel mode on a user address (a system call touching the program's memory). Rows with a tgid
    give the summary's rows by process (``by_process``), named from `process_names` (tgid → command, "?" where
    none was kept), as a recording's summary has them. A row with a tgid names its mapping from that process's
    VMAs in `maps_by_process` (tgid → lines) when given: another process of the count may hold another mapping
    at the same start; `maps` (the target's) names the rows without one. `sited_rows` (trace -g: the same faults
    split by stack, each row with its call site's key, journey.fault_stacks.counted_site_keys) make the
    breakdown by class × mapping × call site: its SUMMARY_TOP most common rows (ties in the order of class,
    mapping and key), as a recording's summary keeps them, each site named by `name_site` once kept; without
    them a count keeps no call site, and says so."""
    rows = [tuple(int(v) for v in row) for row in rows]
    by_process: Counter = Counter()
    for row in rows:
        if len(row) > 8:
            by_process[row[8]] += row[7]
    by_start = {m.start: m for m in maps}
    own_maps = {tgid: {m.start: m for m in lines} for tgid, lines in (maps_by_process or {}).items()}
    summary = TraceSummary(command, pid, "bpf-counts", exit_text, duration, sum(r[7] for r in rows),
                           0, None, 0, 0, provenance="observed: counted in the kernel by a compiled BPF program (maps), one "
                           "counter per kind of fault and VMA; no event was streamed",
                           lost_how="counters in BPF maps: no event crosses to user space, none can be lost")
    if total is not None and total > summary.faults:
        summary.notes.append(f"{total - summary.faults} of {total} faults are counted but not classified: the "
                             "kernel's map of kinds filled")
        summary.faults = total
    kinds: Counter = Counter()
    by_kind: Counter = Counter()
    by_mapping: Counter = Counter()
    breakdown: Counter = Counter()      # (class, mapping, call site)
    names = {0: "read", 1: "write", 2: "instruction fetch"}

    def class_and_label(row: Sequence[int]) -> tuple[FaultClass, str]:
        vma = row[6]
        start, kind = vma >> 3, vma & 7
        vmas = own_maps.get(row[8], {}) if len(row) > 8 and maps_by_process is not None else by_start
        m = vmas.get(start)
        label = ("[stack]" if kind & KIND_GROWTH else "(no mapping: unmapped address)" if not start else
                 mapping_label(m.path) if m else "(a file)" if kind & KIND_FILE else "[anon]")
        return row_class(row[:7], vmas), label
    for row in rows:
        code, n = row[0], row[7]
        cls, label = class_and_label(row)
        kinds[cls] += n
        access = 2 if code & X86_PF_INSTR else 1 if code & X86_PF_WRITE else 0
        mode = "" if code & X86_PF_USER else ", in kernel mode"   # as a recording's summary names them
        by_kind[f"{names[access]}, {'protection fault' if code & X86_PF_PROT else 'not-present page'}{mode}"] += n
        if not code & X86_PF_USER:
            summary.kernel_mode_faults += n
        by_mapping[label] += n
        if sited_rows is None:
            breakdown[(cls.value, label, NO_CALL_SITE)] += n
    for sited, key in sited_rows or ():
        cls, label = class_and_label(tuple(int(v) for v in sited))
        breakdown[(cls.value, label, key)] += int(sited[7])
    summary.allocations = allocations
    ordered = sorted(breakdown.items(), key=lambda kv: (-kv[1], kv[0]))
    if sited_rows is not None:   # the most common only, as a recording's summary keeps them; named once kept
        ordered = [((cls, label, name_site(key)), n) for (cls, label, key), n in ordered[:SUMMARY_TOP]]
    summary.class_breakdown = [(cls, label, site, n) for (cls, label, site), n in ordered]
    summary.by_class = [(c.value, n, HOW[c]) for c, n in kinds.most_common()]
    summary.by_kind = dict(by_kind.most_common())
    summary.by_mapping = by_mapping.most_common()
    names = process_names or {}
    summary.by_process = sorted(((p, names.get(p, "?"), n) for p, n in by_process.items()),
                                key=lambda row: (-row[2], row[0]))
    return summary
