"""The fault classes (journey/fault_classes.py says how each is decided from the events), what decides each, and the
names of the mappings the kernel installs itself. Apart from fault_classes, which needs numpy, so that a summary of
counts (journey/count_summary.py) can name its classes without importing numpy."""

from __future__ import annotations

import enum


class FaultClass(enum.Enum):
    ANON_NEW = "anonymous new page"
    ZERO_PAGE = "zero page"
    COW_COPY = "COW copy"
    COW_REUSE = "COW reuse"
    FILE_HIT = "file page-cache hit"
    FILE_MAJOR = "file read from disk"
    SWAP_IN = "swap-in"
    THP = "THP"
    STACK_GROWTH = "stack growth"
    SIGSEGV = "SIGSEGV"
    SIGBUS = "SIGBUS"
    SPURIOUS = "spurious"
    SPECIAL = "kernel's special mapping"
    FILE_READAHEAD = "file page-cache hit, readahead"


HOW = {
    FaultClass.SIGSEGV: "signal_generate SIGSEGV for the thread inside the fault",
    FaultClass.SIGBUS: "signal_generate SIGBUS for the thread inside the fault",
    FaultClass.THP: "a movable allocation of order ≥ 1 inside the fault",
    FaultClass.FILE_MAJOR: "the faulting page itself was added to the page cache inside the fault "
                           "(mm_filemap_add_to_page_cache of its file index): a major fault",
    FaultClass.FILE_READAHEAD: "the faulting page was in the page cache; other pages of the file were added inside the "
                               "fault (readahead): a minor fault",
    FaultClass.COW_COPY: "a movable order-0 allocation for a write to a present page, or to a private file page",
    FaultClass.SWAP_IN: "an allocation whose kernel call chain runs through do_swap_page (-g)",
    FaultClass.ANON_NEW: "a movable order-0 allocation for a not-present page of an anonymous mapping",
    FaultClass.STACK_GROWTH: "a new anonymous page below the stack's initial start",
    FaultClass.COW_REUSE: "a write to a present page of a private mapping, nothing allocated",
    FaultClass.ZERO_PAGE: "a read of a not-present anonymous page, nothing allocated",
    FaultClass.FILE_HIT: "a not-present page of a file mapping, nothing allocated or read",
    FaultClass.SPURIOUS: "a present page, no write, nothing allocated or changed",
    FaultClass.SPECIAL: "a fault in a mapping the kernel installs itself ([vdso], [vvar]): its pages exist already "
                        "and are mapped as they are, nothing allocated",
}
# /proc/PID/maps names of the mappings the kernel installs with their own fault handlers (special mappings).
SPECIAL_MAPPINGS = frozenset({"[vdso]", "[vvar]", "[vvar_vclock]", "[vsyscall]", "[uprobes]", "[sigpage]", "[vectors]"})
