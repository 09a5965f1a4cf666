"""What kind of fault each one was, decided from what the kernel did inside it, and how it was decided.

Pure: numpy columns of a recording in, one class per fault out. A fault's *window* is the time from its
page_fault_user event to the same thread's next fault; what the thread did in between is what the
fault did, as far as the events show (an allocation by a system call between two faults would be
counted too: with -g the allocation's kernel call chain settles it, and then only allocations made
inside the fault handler count).

The classes and their evidence:
- SIGSEGV / SIGBUS: a signal_generate for the thread in the window (si_code from the tracepoint);
- THP: a movable allocation of order ≥ 1 (a transparent huge page; order 9 for 2 MiB);
- file read from disk (a major fault, as the kernel counts it: VM_FAULT_MAJOR): the faulting page itself
  was added to the page cache inside the fault (mm_filemap_add_to_page_cache of its file index);
- readahead: the fault found its page in the page cache, and pages after it were read in (async readahead
  started by it): a minor fault to the kernel. Where the fault's file index is not known (no mapping
  offset) any page-cache add counts as a read from disk, as before;
- COW copy: a movable order-0 allocation for a write to a present page (error code P|W), or a private
  write to a file page (do_cow_fault);
- swap-in: with -g, an allocation under do_swap_page (without -g it looks like a new anonymous page);
- anonymous new page / stack growth: a movable order-0 allocation for a not-present page of an
  anonymous mapping (below the initial stack: stack growth);
- COW reuse: a write to a present page of a private mapping with no allocation (the page was exclusive);
- zero page: a read of a not-present anonymous page with no allocation;
- file page-cache hit: a not-present page of a file mapping, no allocation, nothing read;
- spurious: a present page, no write, nothing allocated (another CPU fixed it first, or a TLB flush race);
- special mapping: a fault in a mapping the kernel installs itself ([vdso], [vvar], [vsyscall]): its
  pages exist before any fault and are mapped as they are (vdso_fault, vvar_fault): nothing allocated,
  and no zero page either, though it looks like a zero-page read (a not-present read of a mapping with
  no file behind it).

Page-table pages are allocated without __GFP_MOVABLE, data pages with it: only movable allocations
count as the fault's page.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..decode.error_code import X86_PF_PROT, X86_PF_WRITE  # the #PF bits decode/ owns

# The classes, how each is decided and the special mappings' names live in fault_class_names (no numpy), where
# the summary-only count names its classes; re-exported here.
from .fault_class_names import HOW, SPECIAL_MAPPINGS, FaultClass  # noqa: F401

GFP_MOVABLE = 0x08          # ___GFP_MOVABLE_BIT 3 on every kernel from 4.x to 6.18
SIGBUS, SIGSEGV = 7, 11
SEGV_CODES = {1: "SEGV_MAPERR", 2: "SEGV_ACCERR", 3: "SEGV_BNDERR", 4: "SEGV_PKUERR"}
BUS_CODES = {1: "BUS_ADRALN", 2: "BUS_ADRERR", 3: "BUS_OBJERR", 4: "BUS_MCEERR_AR", 5: "BUS_MCEERR_AO"}


# Kernel functions that, in an allocation's call chain, name what the fault did (-g recordings).
CHAIN_CLASSES = (("do_swap_page", FaultClass.SWAP_IN), ("swapin_", FaultClass.SWAP_IN),
                 ("do_huge_pmd_anonymous_page", FaultClass.THP), ("wp_page_copy", FaultClass.COW_COPY),
                 ("do_cow_fault", FaultClass.COW_COPY), ("do_anonymous_page", FaultClass.ANON_NEW),
                 ("alloc_anon_folio", FaultClass.ANON_NEW), ("filemap_fault", FaultClass.FILE_MAJOR),
                 ("page_cache_ra", FaultClass.FILE_MAJOR))
FAULT_ENTRY = ("asm_exc_page_fault", "exc_page_fault")


@dataclass
class FaultEvents:
    """One recording's events as columns, in any order: the classifier sorts them by thread and time."""

    kind: np.ndarray            # 0 fault, 1 allocation, 2 page-cache add, 3 signal
    tid: np.ndarray
    time: np.ndarray
    address: np.ndarray         # faults: the address; allocations: the order; signals: the signal
    error_code: np.ndarray      # faults: the error code; allocations: the GFP flags; signals: si_code;
    #                             page-cache adds: the address column holds the file index, this one the order
    chain_class: np.ndarray | None = None   # allocations with -g: index into CHAIN_CLASSES (−1 none, −2 not in a fault)
    inode: np.ndarray | None = None   # page-cache adds: the file's inode (0 or None: not known)


FAULT, ALLOC, CACHE_ADD, SIGNAL = 0, 1, 2, 3


@dataclass
class MappingKind:
    """What the classifier needs of the mapping a fault hit."""

    anonymous: bool
    private: bool
    stack_start: int | None = None     # for the [stack]: where it started (below: growth)
    special: bool = False              # one of SPECIAL_MAPPINGS
    file_index: int = -1               # the faulting page's index in its file (−1: not a file, or not known)
    inode: int = 0                     # the mapped file's inode (0: not known)


@dataclass
class Classified:
    classes: list[FaultClass]           # one per fault, in the order the faults were given
    detail: list[str]                   # the signal's si_code, or ""
    notes: list[str] = field(default_factory=list)
    index: np.ndarray | None = None     # the classes as indices into CLASS_LIST (for counting in bulk)


@dataclass
class MappingColumns:
    """The mapping of each fault as columns (a recording's hundreds of thousands of faults, in order)."""

    known: np.ndarray          # a mapping holds the address
    anonymous: np.ndarray
    private: np.ndarray
    stack_start: np.ndarray    # the stack's initial start for faults in the [stack] mapping, else −1
    special: np.ndarray | None = None   # the mapping is one of SPECIAL_MAPPINGS (None: none is)
    file_index: np.ndarray | None = None   # the faulting page's index in its file, −1 unknown (None: all unknown)
    inode: np.ndarray | None = None        # the mapped file's inode, 0 unknown (None: all unknown)

    @classmethod
    def of(cls, kinds: list[MappingKind | None]) -> "MappingColumns":
        return cls(np.array([k is not None for k in kinds], dtype=bool),
                   np.array([k is None or k.anonymous for k in kinds], dtype=bool),
                   np.array([k is None or k.private for k in kinds], dtype=bool),
                   np.array([-1 if k is None or k.stack_start is None else min(k.stack_start, (1 << 63) - 1)
                             for k in kinds], dtype=np.int64),
                   np.array([k is not None and k.special for k in kinds], dtype=bool),
                   np.array([-1 if k is None else k.file_index for k in kinds], dtype=np.int64),
                   np.array([0 if k is None else k.inode for k in kinds], dtype=np.int64))


CLASS_LIST = list(FaultClass)
_CLASS_OBJECTS = np.empty(len(CLASS_LIST), dtype=object)   # the members themselves, for a take by class index
_CLASS_OBJECTS[:] = CLASS_LIST


def _class_index(c: FaultClass) -> int:
    return CLASS_LIST.index(c)


def class_columns(codes: np.ndarray, sig: np.ndarray, sig_code: np.ndarray, chain_hint: np.ndarray | None,
                  max_order: np.ndarray, cache_adds: np.ndarray, data_allocs: np.ndarray, maps: MappingColumns,
                  addresses: np.ndarray, own_page_added: np.ndarray | None = None,
                  same_file_adds: np.ndarray | None = None) -> tuple[np.ndarray, list[str]]:
    """The rules of this module's docstring, for many faults at once: each fault's class (an index into
    CLASS_LIST) and its signal's si_code name ("" for no signal). One row per fault in every column:
    its error code, signal and si_code, the class its allocation's call chain names (index into
    CHAIN_CLASSES, −1 none; None without chains), the largest order of its movable allocations (−1 none),
    its page-cache adds, its movable allocations, its mapping and its address; and whether the page-cache adds
    included the faulting page's own index and how many were of its file (−1 or None: not known; then every
    page-cache add in the window counts, as a read from disk)."""
    nf = len(codes)
    write, present = (codes & X86_PF_WRITE) != 0, (codes & X86_PF_PROT) != 0
    below_stack = (maps.stack_start >= 0) & (addresses < maps.stack_start)
    file_backed = maps.known & ~maps.anonymous
    alloc = data_allocs > 0
    special = maps.special if maps.special is not None else np.zeros(nf, dtype=bool)
    hint = chain_hint if chain_hint is not None else np.full(nf, -1, dtype=np.int64)
    hint_class = np.array([_class_index(c) for _fn, c in CHAIN_CLASSES] + [0], dtype=np.int64)[np.where(hint >= 0, hint, -1)]
    hint_class = np.where((hint_class == _class_index(FaultClass.ANON_NEW)) & below_stack,
                          _class_index(FaultClass.STACK_GROWTH), hint_class)
    C = _class_index
    own = own_page_added if own_page_added is not None else np.full(nf, -1, dtype=np.int64)
    same = same_file_adds if same_file_adds is not None else np.full(nf, -1, dtype=np.int64)
    known = own >= 0
    # where the file is known, only its own pages count: another file's adds in the window are a system call's
    cache_adds = np.where(known, same, cache_adds)
    # a fault in an anonymous mapping reads no file: page-cache adds in its window are a system call's
    cache_adds = np.where(maps.known & maps.anonymous & ~special, 0, cache_adds)
    read_by_chain = (hint >= 0) & (hint_class == C(FaultClass.FILE_MAJOR))
    # read in, but not the faulting page: readahead around a page-cache hit (a minor fault to the kernel)
    readahead = known & (same > 0) & (own == 0) & file_backed & ~(write & maps.private)
    hint = np.where(known & read_by_chain & (own == 0), -1, hint)   # the chain saw a read, not the fault's page
    rules: list[tuple[np.ndarray, int | np.ndarray]] = [
        (sig == SIGSEGV, C(FaultClass.SIGSEGV)), (sig == SIGBUS, C(FaultClass.SIGBUS)),
        (special, C(FaultClass.SPECIAL)),   # its pages exist already: what the window shows is not the fault's
        (readahead, C(FaultClass.FILE_READAHEAD)),
        (hint >= 0, hint_class), (max_order >= 1, C(FaultClass.THP)), (cache_adds > 0, C(FaultClass.FILE_MAJOR)),
        (alloc & present & write, C(FaultClass.COW_COPY)),
        (alloc & file_backed & write & maps.private, C(FaultClass.COW_COPY)),
        (alloc & file_backed, C(FaultClass.FILE_HIT)), (alloc & below_stack, C(FaultClass.STACK_GROWTH)),
        (alloc, C(FaultClass.ANON_NEW)), (present & write, C(FaultClass.COW_REUSE)), (present, C(FaultClass.SPURIOUS)),
        (file_backed, C(FaultClass.FILE_HIT)), (~write, C(FaultClass.ZERO_PAGE)),
    ]
    choices: list[np.ndarray] = [np.full(nf, c, dtype=np.int64) if isinstance(c, int) else c for _cond, c in rules]
    index: np.ndarray = np.select([cond for cond, _c in rules], choices, default=C(FaultClass.SPURIOUS))
    detail = [""] * nf
    for i in np.nonzero((sig == SIGSEGV) | (sig == SIGBUS))[0].tolist():
        names = SEGV_CODES if sig[i] == SIGSEGV else BUS_CODES
        detail[i] = names.get(int(sig_code[i]), f"si_code {sig_code[i]}")
    return index, detail


def classify_faults(events: FaultEvents, mapping_of_fault: list[MappingKind | None] | MappingColumns) -> Classified:
    """Classify every fault of `events` (kind == FAULT, in their given order; mapping_of_fault in the same order).

    The windows' sums go to class_columns, which applies the rules to all faults at once (a recording has
    ~10^5–10^6)."""
    maps = mapping_of_fault if isinstance(mapping_of_fault, MappingColumns) else MappingColumns.of(mapping_of_fault)
    n = len(events.kind)
    fault_rows = np.nonzero(events.kind == FAULT)[0]
    nf = len(fault_rows)
    order = np.lexsort((events.time, events.tid))
    tid_sorted = events.tid[order]
    is_fault = events.kind[order] == FAULT
    pos = np.arange(n)
    group_start = np.zeros(n, dtype=np.int64)
    if n:
        starts = np.r_[0, np.nonzero(np.diff(tid_sorted))[0] + 1]
        group_start[starts] = starts
        group_start = np.maximum.accumulate(group_start)
    last_fault = np.maximum.accumulate(np.where(is_fault, pos, -1)) if n else pos
    owner_sorted = np.where((last_fault >= group_start) & ~is_fault, last_fault, -1)
    # owner: for each event (by original row), the original row of the fault whose window holds it
    owner = np.full(n, -1, dtype=np.int64)
    owner[order] = np.where(owner_sorted >= 0, order[np.clip(owner_sorted, 0, None)], -1)
    fault_index = np.full(n, -1, dtype=np.int64)
    fault_index[fault_rows] = np.arange(nf)
    owned = owner >= 0
    of = fault_index[np.clip(owner, 0, None)]

    def per_fault(mask: np.ndarray, values: np.ndarray | None = None, how=np.maximum, fill=0) -> np.ndarray:
        out = np.full(nf, fill, dtype=np.int64)
        sel = mask & owned
        if values is None:
            np.add.at(out, of[sel], 1)
        else:
            how.at(out, of[sel], values[sel].astype(np.int64))
        return out

    kind = events.kind
    in_fault = np.ones(n, dtype=bool)
    chain = events.chain_class
    if chain is not None:
        in_fault = chain != -2       # with call chains, only allocations inside the fault handler count
    movable = (kind == ALLOC) & ((events.error_code & GFP_MOVABLE) != 0) & in_fault
    data_allocs = per_fault(movable)
    max_order = per_fault(movable, events.address, fill=-1)
    cache_adds = per_fault(kind == CACHE_ADD)
    own_page_added = same_file_adds = None
    if maps.file_index is not None and maps.inode is not None and events.inode is not None and nf:
        # Pages added to the fault's own file count (a system call in the window may add another file's), and
        # among them its own page: when the folio added (index, 2^order pages) holds the fault's index.
        fi, ino = maps.file_index[np.clip(of, 0, None)], maps.inode[np.clip(of, 0, None)]
        first = events.address.astype(np.int64)
        span = np.left_shift(1, np.clip(events.error_code.astype(np.int64), 0, 20))
        same_file = (kind == CACHE_ADD) & (fi >= 0) & (ino != 0) & (events.inode.astype(np.int64) == ino)
        known = (maps.file_index >= 0) & (maps.inode != 0)
        same_file_adds = np.where(known, per_fault(same_file), -1)
        own_page_added = np.where(known, per_fault(same_file & (first <= fi) & (fi < first + span)), -1)
    # Only the fault's own signal counts: SIGSEGV or SIGBUS with a fault si_code (SEGV_MAPERR, BUS_ADRERR, …:
    # 1..127). Other signals land in the same window (SIGSTOP from the tool holding the program, a child's
    # SIGCHLD, a kill()'s SI_USER) and, as the largest number, once hid the SIGSEGV.
    codes = events.error_code.astype(np.int64)
    fault_signal = (kind == SIGNAL) & ((events.address == SIGSEGV) | (events.address == SIGBUS)) & (codes > 0) & (codes < 128)
    segv, bus = fault_signal & (events.address == SIGSEGV), fault_signal & (events.address == SIGBUS)
    has_segv = per_fault(segv) > 0
    sig = np.where(has_segv, SIGSEGV, np.where(per_fault(bus) > 0, SIGBUS, 0))
    sig_code = np.where(has_segv, per_fault(segv, codes), per_fault(bus, codes))
    chain_hint = per_fault(movable & (chain >= 0), chain, how=np.maximum, fill=-1) if chain is not None else None

    index, detail = class_columns(events.error_code[fault_rows].astype(np.int64), sig, sig_code, chain_hint,
                                  max_order, cache_adds, data_allocs, maps, events.address[fault_rows].astype(np.int64),
                                  own_page_added, same_file_adds)
    classes = _CLASS_OBJECTS[index].tolist()   # one take, not a Python index per fault (half the time)
    notes = []
    if chain is None:
        notes.append("without -g a swap-in looks like a new anonymous page (record with -g to tell them apart)")
    return Classified(classes, detail, notes, index)
