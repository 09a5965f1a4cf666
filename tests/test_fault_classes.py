"""The fault classifier on hand-made events: each rule, the window, and what -g changes."""

import numpy as np

from pagefault.journey.fault_classes import (ALLOC, CACHE_ADD, FAULT, SIGNAL, FaultClass as C, FaultEvents,
                                             MappingKind, classify_faults)

ANON = MappingKind(anonymous=True, private=True)
FILE = MappingKind(anonymous=False, private=True)
MOVABLE, PGTABLE = 0x140dca, 0x400dc0   # GFP_HIGHUSER_MOVABLE|__GFP_ZERO|…; GFP_PGTABLE_USER (not movable)


def events(rows, chains=None):
    kind, tid, time, a, b = zip(*rows)
    return FaultEvents(np.array(kind), np.array(tid), np.array(time, dtype=np.uint64),
                       np.array(a, dtype=np.uint64), np.array(b, dtype=np.uint64),
                       None if chains is None else np.array(chains))


def test_each_rule_on_one_thread():
    rows = [(FAULT, 1, 10, 0x1000, 0x6), (ALLOC, 1, 11, 0, PGTABLE), (ALLOC, 1, 12, 0, MOVABLE),  # new page
            (FAULT, 1, 20, 0x2000, 0x4),                                                         # zero page
            (FAULT, 1, 30, 0x2000, 0x7), (ALLOC, 1, 31, 0, MOVABLE),                              # COW copy
            (FAULT, 1, 40, 0x1000, 0x7),                                                         # COW reuse
            (FAULT, 1, 50, 0x9000, 0x4), (CACHE_ADD, 1, 51, 0, 0), (ALLOC, 1, 52, 0, MOVABLE),    # read from disk
            (FAULT, 1, 60, 0xa000, 0x4),                                                         # page-cache hit
            (FAULT, 1, 70, 0x200000, 0x6), (ALLOC, 1, 71, 9, MOVABLE),                           # THP
            (FAULT, 1, 80, 0x5000, 0x6), (SIGNAL, 1, 81, 11, 2),                                  # SIGSEGV
            (FAULT, 1, 90, 0x1000, 0x5)]                                                         # spurious
    maps = [ANON, ANON, ANON, ANON, FILE, FILE, ANON, ANON, ANON]
    r = classify_faults(events(rows), maps)
    assert r.classes == [C.ANON_NEW, C.ZERO_PAGE, C.COW_COPY, C.COW_REUSE, C.FILE_MAJOR, C.FILE_HIT, C.THP,
                         C.SIGSEGV, C.SPURIOUS]
    assert r.detail[7] == "SEGV_ACCERR"


def test_other_signals_in_the_window_do_not_hide_the_faults_own():
    # the fault's SIGSEGV (SEGV_ACCERR), then the tool's SIGSTOP (SI_KERNEL) and a child's SIGCHLD (CLD_STOPPED):
    # seen live when the tool holds the program stopped after the fault (a larger signal number won before)
    rows = [(FAULT, 1, 10, 0x5000, 0x6), (SIGNAL, 1, 11, 11, 2), (SIGNAL, 1, 12, 19, 128), (SIGNAL, 1, 13, 17, 5),
            (FAULT, 1, 20, 0x6000, 0x6), (SIGNAL, 1, 21, 11, 0),       # a kill(SIGSEGV): SI_USER, not a fault's
            (FAULT, 1, 30, 0x7000, 0x6), (SIGNAL, 1, 31, 7, 2)]        # SIGBUS, BUS_ADRERR
    r = classify_faults(events(rows), [ANON, ANON, ANON])
    assert r.classes == [C.SIGSEGV, C.SPURIOUS, C.SIGBUS]     # the second: a write with nothing seen to follow
    assert r.detail[0] == "SEGV_ACCERR" and r.detail[2] == "BUS_ADRERR"


def test_a_page_table_allocation_alone_is_not_the_faults_page():
    r = classify_faults(events([(FAULT, 1, 10, 0x1000, 0x4), (ALLOC, 1, 11, 0, PGTABLE)]), [ANON])
    assert r.classes == [C.ZERO_PAGE]


def test_windows_are_per_thread_and_events_arrive_in_any_order():
    # thread 2's allocation falls inside thread 1's window in time, but belongs to thread 2's fault
    rows = [(ALLOC, 2, 16, 0, MOVABLE), (FAULT, 1, 10, 0x1000, 0x4), (FAULT, 2, 15, 0x3000, 0x6),
            (FAULT, 1, 20, 0x2000, 0x6), (ALLOC, 1, 21, 0, MOVABLE)]
    r = classify_faults(events(rows), [ANON, ANON, ANON])
    assert r.classes == [C.ZERO_PAGE, C.ANON_NEW, C.ANON_NEW]


def test_stack_growth_is_below_the_initial_stack():
    stack = MappingKind(anonymous=True, private=True, stack_start=0x7000)
    rows = [(FAULT, 1, 10, 0x6000, 0x6), (ALLOC, 1, 11, 0, MOVABLE), (FAULT, 1, 20, 0x8000, 0x6),
            (ALLOC, 1, 21, 0, MOVABLE)]
    assert classify_faults(events(rows), [stack, stack]).classes == [C.STACK_GROWTH, C.ANON_NEW]


def test_with_call_chains_a_swap_in_is_told_apart_and_a_syscalls_allocation_is_not_the_faults():
    # chain classes: index 0 = do_swap_page; −2 = an allocation outside the fault handler (a read() say)
    rows = [(FAULT, 1, 10, 0x1000, 0x4), (ALLOC, 1, 11, 0, MOVABLE), (FAULT, 1, 20, 0x2000, 0x4),
            (ALLOC, 1, 21, 0, MOVABLE)]
    r = classify_faults(events(rows, chains=[-1, 0, -1, -2]), [ANON, ANON])
    assert r.classes == [C.SWAP_IN, C.ZERO_PAGE] and not r.notes
    assert classify_faults(events(rows), [ANON, ANON]).notes      # without -g it says what it cannot tell


def test_no_faults():
    r = classify_faults(events([(ALLOC, 1, 1, 0, MOVABLE)]), [])
    assert r.classes == []


def test_a_read_of_the_vdso_is_its_own_class_not_a_zero_page():
    """[vdso] and [vvar] have no file behind them, so a not-present read there looked like a zero-page read;
    the kernel maps their own pages (vdso_fault, vvar_fault). An anonymous read beside it stays a zero page."""
    vdso = MappingKind(anonymous=True, private=True, special=True)
    rows = [(FAULT, 1, 10, 0x7fff0000, 0x4), (FAULT, 1, 20, 0x7fff1000, 0x14), (FAULT, 1, 30, 0x2000, 0x4)]
    r = classify_faults(events(rows), [vdso, vdso, ANON])
    assert r.classes == [C.SPECIAL, C.SPECIAL, C.ZERO_PAGE]


def test_the_counts_summary_names_special_mappings_too():
    from pagefault.evidence import MapsLine
    from pagefault.journey.trace_summary import summarize_counts
    vdso = MapsLine(0x7fff0000, 0x7fff2000, "r-xp", 0, "00:00", 0, "[vdso]")
    heap = MapsLine(0x10000, 0x20000, "rw-p", 0, "00:00", 0, "")
    # (error code, allocated, order, cache add, signal, si_code, vm_start << 3 | kind, faults)
    rows = np.array([[0x4, 0, 0, 0, 0, 0, 0x7fff0000 << 3, 1], [0x4, 0, 0, 0, 0, 0, 0x10000 << 3, 3]], dtype=np.uint64)
    s = summarize_counts(rows, [vdso, heap], ["p"], 1, "exited", 0.1)
    assert dict((c, n) for c, n, _h in s.by_class) == {C.SPECIAL.value: 1, C.ZERO_PAGE.value: 3}


def test_a_major_fault_reads_its_own_page_and_readahead_is_a_minor_fault():
    """The kernel counts a fault major when its own page had to be read (VM_FAULT_MAJOR); a fault that found
    its page cached but started readahead of the next ones is minor. Page-cache adds carry the file index
    (address column) and the folio order (error-code column)."""
    own = MappingKind(anonymous=False, private=True, file_index=7, inode=50)
    hit = MappingKind(anonymous=False, private=True, file_index=8, inode=50)
    in_folio = MappingKind(anonymous=False, private=True, file_index=21, inode=50)
    other_file = MappingKind(anonymous=False, private=True, file_index=3, inode=50)
    unknown = MappingKind(anonymous=False, private=True)
    # (kind, tid, time, address | file index, error code | folio order), and each event's inode
    rows = [(FAULT, 1, 10, 0x7000, 0x4), (CACHE_ADD, 1, 11, 7, 0), (CACHE_ADD, 1, 12, 9, 0),     # own page: major
            (FAULT, 1, 20, 0x8000, 0x4), (CACHE_ADD, 1, 21, 16, 2),                               # others: readahead
            (FAULT, 1, 30, 0x15000, 0x4), (CACHE_ADD, 1, 31, 20, 2),                              # in a 4-page folio
            (FAULT, 1, 40, 0x3000, 0x4), (CACHE_ADD, 1, 41, 3, 0),       # index 3 of another file: a write()'s
            (FAULT, 1, 50, 0x9000, 0x4), (CACHE_ADD, 1, 51, 3, 0)]                                # index unknown
    inodes = [0, 50, 50, 0, 50, 0, 50, 0, 77, 0, 77]
    ev = events(rows)
    ev.inode = np.array(inodes, dtype=np.uint64)
    r = classify_faults(ev, [own, hit, in_folio, other_file, unknown])
    assert r.classes == [C.FILE_MAJOR, C.FILE_READAHEAD, C.FILE_MAJOR, C.FILE_HIT, C.FILE_MAJOR]


def test_the_classes_list_is_the_members_themselves_in_fault_order():
    # classify_faults builds its list of classes by one take from an array of the members: the same objects, in
    # the same order, as indexing CLASS_LIST fault by fault gave
    from pagefault.journey.fault_classes import CLASS_LIST
    rng = np.random.default_rng(7)
    n = 2000
    rows = [(FAULT, int(t % 5), int(t), 0x1000 * int(t), int(c))
            for t, c in zip(range(n), rng.choice([0x4, 0x6, 0x7, 0x5, 0x14], n))]
    rows += [(ALLOC, int(t % 5), int(t) + 1, int(o), MOVABLE) for t, o in zip(range(0, n, 3), rng.integers(0, 3, n))]
    r = classify_faults(events(rows), [ANON] * n)
    assert r.index is not None and len(r.classes) == n
    assert all(a is b for a, b in zip(r.classes, [CLASS_LIST[i] for i in r.index.tolist()]))
