"""The summary of a recording: what faulted, where, from which instruction, through which kernel path."""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from ..capture.records import PERF_CONTEXT_MAX, Mapping, Stream, distinct_callchains, parse_stream, raw_field, split_callchain
from ..decode.error_code import X86_PF_INSTR, X86_PF_PROT, X86_PF_WRITE
from ..decode.gfp import decode_gfp
from ..kernel.kallsyms import KernelSymbols, text_symbols
from ..symbols.elf import RecordedFiles, resolve_mapping
from .count_summary import SUMMARY_TOP, TraceSummary, kernel_instruction, reconcile, summarize_counts  # noqa: F401
from .fault_classes import (
    ALLOC,
    CACHE_ADD,
    CHAIN_CLASSES,
    CLASS_LIST,
    FAULT,
    FAULT_ENTRY,
    HOW,
    SIGNAL,
    SPECIAL_MAPPINGS,
    Classified,
    FaultEvents,
    MappingColumns,
    classify_faults,
)

if TYPE_CHECKING:   # a type only: the recording's loader (cattrs) is not imported to read counts
    from ..capture.recording import Recording

ENTRY_FUNCS = ("asm_exc_page_fault",)
MAX_PAGE_ORDER = 20   # far above any kernel's MAX_PAGE_ORDER (10 on x86-64); beyond it a field is damaged


USER_FAULT, KERNEL_FAULT = "exceptions:page_fault_user", "exceptions:page_fault_kernel"
CACHE_ADD_EVENT = "filemap:mm_filemap_add_to_page_cache"


@dataclass
class FaultColumns:
    """The faults of a perf-tier recording on user addresses, in stream order, both modes together."""

    mask: np.ndarray           # over all samples: this sample is such a fault
    addresses: np.ndarray      # one row per fault from here on
    ips: np.ndarray
    codes: np.ndarray
    kernel_mode: np.ndarray    # taken in kernel mode (a system call touching user memory), from page_fault_kernel


def user_address_limit(meta: dict) -> int:
    """The first address above user space: 2^47 with 4-level paging, 2^56 with 5 (x86-64 TASK_SIZE_MAX, rounded up)."""
    return 1 << (56 if (meta.get("kernel") or {}).get("paging_levels") == 5 else 47)


def fault_columns(stream: Stream, meta: dict, event_type: np.ndarray) -> FaultColumns:
    """Every fault on a user address: page_fault_user's, and page_fault_kernel's below the user-space limit (a
    kernel-mode fault on a kernel address, a vmalloc fault say, is no fault of the program's memory)."""
    ids = _event_ids(meta)
    n = len(event_type)
    user = event_type == ids.get(USER_FAULT, -1)
    kernel = event_type == ids.get(KERNEL_FAULT, -1)
    columns = {}
    for name in ("address", "ip", "error_code"):
        col = np.zeros(n, dtype=np.uint64)
        if user.any():
            col[user] = field_values(stream, meta, USER_FAULT, name, user)
        if kernel.any():
            col[kernel] = field_values(stream, meta, KERNEL_FAULT, name, kernel)
        columns[name] = col
    kernel &= columns["address"] < np.uint64(user_address_limit(meta))
    mask = user | kernel
    return FaultColumns(mask, columns["address"][mask], columns["ip"][mask], columns["error_code"][mask], kernel[mask])


def _event_ids(meta: dict) -> dict[str, int]:
    return {f"{e['system']}:{e['name']}": int(i) for i, e in meta.get("events", {}).items()}


def _column(values: np.ndarray | None, n: int, dtype=np.uint64) -> np.ndarray:
    """A sample column, or zeros where this kind of sample does not carry it."""
    return values if values is not None else np.zeros(n, dtype=dtype)


def field_values(stream: Stream, meta: dict, event: str, name: str, mask: np.ndarray) -> np.ndarray:
    ev = meta["events"][str(_event_ids(meta)[event])]
    off, size, signed = ev["fields"][name]
    raw = _column(stream.samples.raw_offset, len(stream.samples), np.int64)
    return raw_field(stream.data, raw[mask], off, size, bool(signed))


def mappings_of(meta: dict, stream: Stream) -> list[Mapping]:
    """Every mapping the recording knows of: the brk heaps its brk calls show (first, so that a heap grown after
    the last /proc snapshot is named to its top), then /proc/PID/maps snapshots, then perf's MMAP2 records."""
    maps = [Mapping(m["start"], m["end"], m["offset"], m["path"], prot=_prot(m.get("perms", "---p")),
                    source="observed: /proc/PID/maps", shared=m.get("perms", "---p")[3:4] == "s",
                    inode=int(m.get("inode") or 0))
            for m in meta.get("maps", [])]
    out = brk_heaps(meta, stream) + maps + stream.mmaps
    files = RecordedFiles(meta)   # which files may be opened here, and the symbols the recording saved
    for m in out:
        setattr(m, "recorded_files", files)  # noqa: B010  (read by symbols.elf.resolve_mapping)
    return out


PROT_READ, PROT_WRITE, PROT_EXEC = 1, 2, 4


def _prot(perms: str) -> int:
    """mmap's PROT_* bits from a maps line's "rwxp"."""
    return ((PROT_READ if perms[0:1] == "r" else 0) | (PROT_WRITE if perms[1:2] == "w" else 0)
            | (PROT_EXEC if perms[2:3] == "x" else 0))


PAGE = 4096


def brk_heaps(meta: dict, stream: Stream) -> list[Mapping]:
    """Each process's [heap], derived from the values its brk calls returned (syscalls:sys_exit_brk).

    brk(2) returns the break after the call, whether it moved or not: the lowest value a process saw is its
    heap's start (mm->start_brk, where the first brk(0) finds it), the highest its heap's top. A heap shrunk
    later is still named over its largest extent: nothing else is placed there in between.
    Empty when the recording has no brk events (older recordings, the unprivileged tier)."""
    ids = _event_ids(meta)
    event = ids.get("syscalls:sys_exit_brk")
    if event is None or stream.samples.event_type is None:
        return []
    mask = stream.samples.event_type == event
    if not mask.any():
        return []
    returns = field_values(stream, meta, "syscalls:sys_exit_brk", "ret", mask).astype(np.uint64)
    pids = field_values(stream, meta, "syscalls:sys_exit_brk", "common_pid", mask)
    heaps = []
    for pid in np.unique(pids).tolist():
        mine = returns[pids == pid]
        start, top = int(mine.min()), int(mine.max())
        end = (top + PAGE - 1) & ~(PAGE - 1)
        if start and end > start:
            heaps.append(Mapping(start, end, 0, "[heap]", source=f"derived: PID {pid}'s brk calls "
                                 f"(syscalls:sys_exit_brk) returned 0x{start:x} to 0x{top:x}"))
    return heaps


def label_for(m: Mapping | None) -> str:
    if m is None:
        return "(no mapping: unmapped address)"
    if m.path.startswith("["):
        return m.path
    if not m.path or m.path == "//anon":
        return "[anon]"
    return m.path.rsplit("/", 1)[-1]


def mapping_index(addresses: np.ndarray, maps: list[Mapping],
                  times: np.ndarray | None = None) -> tuple[list[Mapping], np.ndarray]:
    """The mappings in address order, and for each address the index of the one holding it (-1: none).

    /proc snapshots win over MMAP2 records for the same start. A start mapped again (MAP_FIXED over a mapping
    at the same start, as ld.so maps a library over its reservation) has an MMAP2 record each time: with the
    faults' `times` (perf's clock, as the records'), a fault gets the one in force when it was taken, the
    latest record at or before it (before them all, the first mapping known there); without, the first.
    """
    by_start: dict[int, Mapping] = {}
    for m in maps:
        by_start.setdefault(m.start, m)
    remapped = _remapped(maps, by_start) if times is not None else {}
    # at each start its first mapping, then the ones that replaced it in time order
    ordered = sorted([*by_start.values(), *(m for ms in remapped.values() for m in ms)],
                     key=lambda m: (m.start, m is not by_start[m.start], m.time))
    a = np.asarray(addresses, dtype=np.uint64)
    if not ordered or not len(a):
        return ordered, np.full(len(a), -1, dtype=np.int64)
    starts = np.array([m.start for m in ordered], dtype=np.uint64)
    ends = np.array([m.end for m in ordered], dtype=np.uint64)
    first_at = np.nonzero(np.r_[True, starts[1:] != starts[:-1]])[0]   # each start's first mapping
    i = np.searchsorted(starts[first_at], a, side="right") - 1
    idx = np.where(i >= 0, first_at[np.clip(i, 0, None)], -1)
    if remapped:
        idx = _in_force(idx, ordered, starts, ends, np.asarray(times, dtype=np.uint64), remapped, a)
    ok = (idx >= 0) & (a < ends[np.clip(idx, 0, None)])
    return ordered, np.where(ok, idx, -1)


def _remapped(maps: list[Mapping], first: dict[int, Mapping]) -> dict[int, list[Mapping]]:
    """For each start mapped again: the MMAP2 records (with a time) there other than its first mapping."""
    later: dict[int, list[Mapping]] = {}
    for m in maps:
        if m.time >= 0 and m is not first[m.start]:
            later.setdefault(m.start, []).append(m)
    return later


def _in_force(idx: np.ndarray, ordered: list[Mapping], starts: np.ndarray, ends: np.ndarray, times: np.ndarray,
              remapped: dict[int, list[Mapping]], a: np.ndarray) -> np.ndarray:
    """idx (each address's first mapping at its start) moved to the mapping in force at the fault's time: of the
    start's records with a time (its first mapping's too, if it has one), the latest at or before the fault,
    where that one holds the address; before them all, the first."""
    for start in remapped:
        first = int(np.searchsorted(starts, np.uint64(start), side="left"))
        at = [first] * (ordered[first].time >= 0) + list(range(first + 1, first + 1 + len(remapped[start])))
        when = np.array([ordered[p].time for p in at], dtype=np.uint64)
        by_time = np.argsort(when, kind="stable")
        at_sorted, when_sorted = np.array(at, dtype=np.int64)[by_time], when[by_time]
        sel = np.nonzero(idx == first)[0]
        k = np.searchsorted(when_sorted, times[sel], side="right") - 1
        chosen = at_sorted[np.clip(k, 0, None)]
        idx[sel] = np.where((k >= 0) & (a[sel] < ends[chosen]), chosen, first)
    return idx


def classify(addresses: np.ndarray, maps: list[Mapping]) -> list[Mapping | None]:
    """For each address the mapping holding it, or None."""
    ordered, idx = mapping_index(addresses, maps)
    return [ordered[i] if i >= 0 else None for i in idx.tolist()]


def count_by_mapping(addresses: np.ndarray, maps: list[Mapping]) -> list[tuple[str, int]]:
    """(label, faults) most first: counted with bincount over mapping indices, not address by address."""
    ordered, idx = mapping_index(addresses, maps)
    counts = np.bincount(idx + 1, minlength=len(ordered) + 1)
    by_label: Counter[str] = Counter()
    if counts[0]:
        by_label[label_for(None)] += int(counts[0])
    for i in np.nonzero(counts[1:])[0].tolist():
        by_label[label_for(ordered[i])] += int(counts[i + 1])
    return by_label.most_common()


def summarize(rec: Recording, *, top: int = SUMMARY_TOP, ksyms: KernelSymbols | None = None) -> TraceSummary:
    meta = rec.meta
    sample_type = meta["sample_type"] | (32 if meta.get("callchain") else 0)
    # a summary only counts: stream order will do, and tracepoint samples need no ip/tid/time/cpu
    tier = meta.get("tier", "perf")
    stream = parse_stream(rec.data, sample_type, in_time_order=False,
                          columns=frozenset({"tid", "time"}) if tier == "perf" else frozenset({"ip", "addr"}))
    s = stream.samples
    event_type = _column(s.event_type, len(s), np.uint16)
    ids = _event_ids(meta)
    notes = list(meta.get("notes", [])) + list(meta.get("warnings", []))
    summary = TraceSummary([str(a) for a in meta.get("command") or []], meta.get("pid") or 0, tier,
                           meta.get("exit") or "?", meta.get("duration") or 0.0, 0, 0, 0, stream.lost,
                           stream.lost_records, notes=notes, integrity=rec.integrity.describe())
    m = _summary_masks(summary, stream, meta, ids, event_type)
    summary.lost, summary.lost_how = lost_events(stream, meta, ids, tier, rec.integrity.complete)
    summary.faults = int(m.faults.sum())
    summary.allocations = int(m.allocs.sum())
    summary.mmaps = int(m.mmaps.sum())
    _count_kinds(summary, m.codes, m.kernel_mode, ids)
    reconcile(summary, meta.get("kernel_fault_counts"), len(m.addresses), from_exec=bool(meta.get("spawned", True)))

    maps = mappings_of(meta, stream)
    summary.by_mapping = count_by_mapping(m.addresses, maps) if len(m.addresses) else []
    if tier == "perf" and len(m.addresses):
        # a program that runs others (gcc: cc1, as, ld) has their faults too: one row per process
        pids, counts = np.unique(_column(s.pid, len(s), np.uint32)[m.faults], return_counts=True)
        names = process_names(stream)
        summary.by_process = sorted(((int(p), names.get(int(p), "?"), int(n)) for p, n in zip(pids, counts)),
                                    key=lambda row: (-row[2], row[0]))
    # the allocations' distinct call chains, decoded once for all their uses below
    alloc_chains = (distinct_callchains(stream.data, s, np.nonzero(m.allocs)[0])
                    if meta.get("callchain") and summary.allocations else None)
    if ksyms is None and tier == "perf":
        ksyms = _kernel_symbols_named(meta, m.ips, alloc_chains)
    ksyms = _top_instructions(summary, m.ips, maps, meta, top, ksyms)
    if summary.allocations:
        _allocation_counts(summary, stream, meta, m.allocs)
    if tier == "perf" and summary.faults:
        if meta.get("callchain"):
            ksyms = ksyms or KernelSymbols.load()
        result = _classify(stream, meta, ids, event_type, m.faults, m.allocs, m.addresses,
                           m.codes if m.codes is not None else np.zeros(len(m.addresses), dtype=np.uint64), maps,
                           _chain_symbols(meta, ksyms) if ksyms is not None else None, alloc_chains)
        _class_summary(summary, result, m.addresses, m.ips, maps, top, _column(s.time, len(s))[m.faults], ksyms, meta)
    if alloc_chains is not None:
        _allocation_paths(summary, meta, alloc_chains, top, ksyms or KernelSymbols.load())
    return summary


class _SummaryMasks(NamedTuple):
    """Which samples are faults, allocations and mmaps, and the faults' columns (codes: None on the user tier)."""

    faults: np.ndarray
    allocs: np.ndarray
    mmaps: np.ndarray
    addresses: np.ndarray
    ips: np.ndarray
    codes: np.ndarray | None
    kernel_mode: np.ndarray | None


def _summary_masks(summary: TraceSummary, stream: Stream, meta: dict, ids: dict[str, int],
                   event_type: np.ndarray) -> _SummaryMasks:
    """The tier's fault samples and their columns; sets the summary's provenance to what gave them."""
    s = stream.samples
    if summary.tier == "perf":
        f = fault_columns(stream, meta, event_type)
        summary.provenance = ("observed: tracepoints exceptions:page_fault_user"
                              + (", exceptions:page_fault_kernel (on user addresses)" if KERNEL_FAULT in ids else "")
                              + ", kmem:mm_page_alloc via perf_event_open")
        return _SummaryMasks(f.mask, event_type == ids.get("kmem:mm_page_alloc", -1),
                             event_type == ids.get("syscalls:sys_enter_mmap", -1), f.addresses, f.ips, f.codes,
                             f.kernel_mode)
    summary.provenance = "observed: software event page-faults (address and ip only)"
    none = np.zeros(len(s), dtype=bool)
    return _SummaryMasks(np.ones(len(s), dtype=bool), none, none, _column(s.addr, len(s)), s.ip, None, None)


def _count_kinds(summary: TraceSummary, codes: np.ndarray | None, kernel_mode: np.ndarray | None,
                 ids: dict[str, int]) -> None:
    """The faults by access, present-or-not and mode, from their error codes; the kernel-mode faults' notes."""
    if codes is not None and len(codes):
        access = np.where(codes & X86_PF_INSTR, 2, np.where(codes & X86_PF_WRITE, 1, 0))
        prot = (codes & X86_PF_PROT) != 0
        names = {0: "read", 1: "write", 2: "instruction fetch"}
        in_kernel = kernel_mode if kernel_mode is not None else np.zeros(len(codes), dtype=bool)
        for a in (0, 1, 2):
            for p, pname in ((False, "not-present page"), (True, "protection fault")):
                for mode, mname in ((False, ""), (True, ", in kernel mode")):
                    n = int(np.sum((access == a) & (prot == p) & (in_kernel == mode)))
                    if n:
                        summary.by_kind[f"{names[a]}, {pname}{mname}"] = n
    if kernel_mode is not None:
        summary.kernel_mode_faults = int(kernel_mode.sum())
        if KERNEL_FAULT not in ids:
            summary.notes.append("faults taken in kernel mode (a system call writing into a fresh user buffer) are "
                                 "not in this recording: exceptions:page_fault_kernel was not recorded")
        elif summary.kernel_mode_faults:
            summary.notes.append(f"{summary.kernel_mode_faults} of the faults were taken in kernel mode, inside "
                                 "system calls touching the program's memory (exceptions:page_fault_kernel)")


def _top_instructions(summary: TraceSummary, fault_ips: np.ndarray, maps: list[Mapping], meta: dict, top: int,
                      ksyms: KernelSymbols | None) -> KernelSymbols | None:
    """The instructions that faulted most, each placed in its file or the kernel; returns the kernel's symbols
    if they had to be loaded (so the caller loads them once)."""
    if not len(fault_ips):
        return ksyms
    uniq, counts = np.unique(fault_ips, return_counts=True)
    order = np.argsort(-counts, kind="stable")[:top]
    ip_maps = classify(uniq[order], maps)
    for ip, n, m in zip(uniq[order], counts[order], ip_maps):
        ip = int(ip)
        if m is not None and m.path.startswith("/"):
            r = resolve_mapping(ip, m)
            where, detail = r.describe(), r.derivations[0]
        elif m is None and ip >= user_address_limit(meta) and summary.tier == "perf":
            # a kernel-mode fault's instruction is the kernel's (copy_to_user, clear_user, …)
            ksyms = ksyms or KernelSymbols.load()
            where = _kernel_site(ip, ksyms, meta)
            detail = "a fault taken in kernel mode, inside a system call"
        else:
            where, detail = label_for(m) if m else "(unknown mapping)", ""
        summary.top_instructions.append({"ip": ip, "count": int(n), "where": where, "derivation": detail})
    return ksyms


def _allocation_counts(summary: TraceSummary, stream: Stream, meta: dict, alloc_mask: np.ndarray) -> None:
    """The page allocations by order and by GFP flags."""
    orders = field_values(stream, meta, "kmem:mm_page_alloc", "order", alloc_mask)
    summary.alloc_orders = {int(o): int(n) for o, n in zip(*np.unique(orders, return_counts=True))}
    bad = {o: n for o, n in summary.alloc_orders.items() if o > MAX_PAGE_ORDER}
    if bad:   # no buddy allocator hands out more than 2^MAX_PAGE_ORDER pages: a damaged field
        summary.notes.append(f"{sum(bad.values())} allocations carry an impossible order ({', '.join(map(str, bad))}); "
                             "they are counted but their size is not shown")
    gfps = field_values(stream, meta, "kmem:mm_page_alloc", "gfp_flags", alloc_mask)
    gu, gc = np.unique(gfps, return_counts=True)
    table = meta.get("gfp_bits") or {}
    summary.alloc_gfp = sorted(((decode_gfp(int(g), table.get("values"), table.get("source", "")).symbolic, int(n))
                                for g, n in zip(gu, gc)),
                               key=lambda t: -t[1])


def _allocation_paths(summary: TraceSummary, meta: dict, alloc_chains: tuple[list[list[int]], np.ndarray], top: int,
                      ksyms: KernelSymbols) -> None:
    """The kernel call paths that allocated most, where this boot's symbols can name them."""
    if not ksyms.usable:
        summary.notes.append("kernel call chains recorded, but /proc/kallsyms shows no addresses (fix: run as root)")
    elif (meta.get("kernel") or {}).get("text_base") not in (None, ksyms.text_base()):
        summary.notes.append("this recording was made under another boot of the kernel: call paths are not symbolised")
    else:
        summary.kernel_paths = _kernel_paths(*alloc_chains, ksyms, top)


def process_names(stream: Stream) -> dict[int, str]:
    """Each process's command: its own COMM record (exec), else its parent's, which a fork without exec keeps."""
    names = dict(stream.comms)
    for parent, child in stream.forks:      # in the order the kernel told of them
        if child not in names and parent in names:
            names[child] = names[parent]
    return names


def _kernel_symbols_named(meta: dict, fault_ips: np.ndarray,
                          alloc_chains: tuple[list[list[int]], np.ndarray] | None) -> KernelSymbols | None:
    """This boot's kernel symbols for the kernel addresses the summary names (kernel-mode faults' instructions,
    the allocations' call chains), from one numpy pass over /proc/kallsyms (kernel.kallsyms.TextSymbols) where
    the full parse of every symbol (KernelSymbols.load) took 0.2-0.5 s of each summary here; None when there
    are none to name."""
    limit = user_address_limit(meta)
    wanted = set(np.unique(fault_ips[fault_ips >= np.uint64(limit)]).tolist()) if len(fault_ips) else set()
    for chain in (alloc_chains[0] if alloc_chains else []):
        wanted.update(a for a in chain if limit <= a < PERF_CONTEXT_MAX)
    return text_symbols().kernel_symbols(wanted) if wanted else None


def _chain_symbols(meta: dict, ksyms: KernelSymbols) -> KernelSymbols | None:
    """The kernel symbols to read allocation call chains with, if the recording has chains of this boot."""
    if meta.get("callchain") and ksyms.usable and (meta.get("kernel") or {}).get("text_base") in (None, ksyms.text_base()):
        return ksyms
    return None


class ClassifiedFaults(NamedTuple):
    """Every fault of a recording, in stream order: one row per fault in each column."""

    addresses: np.ndarray
    tids: np.ndarray
    times: np.ndarray       # the sample's time (perf's clock): with the thread, what tells two faults on one address apart
    result: Classified


def classify_recording(rec: Recording, ksyms: KernelSymbols | None = None) -> ClassifiedFaults:
    """Every fault of a perf-tier recording: its address, thread, time and class, in stream order."""
    meta = rec.meta
    stream = parse_stream(rec.data, meta["sample_type"] | (32 if meta.get("callchain") else 0), in_time_order=False,
                          columns=frozenset({"tid", "time"}))
    ids = _event_ids(meta)
    event_type = _column(stream.samples.event_type, len(stream.samples), np.uint16)
    faults = fault_columns(stream, meta, event_type)
    alloc_mask = event_type == ids.get("kmem:mm_page_alloc", -1)
    result = _classify(stream, meta, ids, event_type, faults.mask, alloc_mask, faults.addresses, faults.codes,
                       mappings_of(meta, stream), _chain_symbols(meta, ksyms or KernelSymbols.load()))
    tids = _column(stream.samples.tid, len(stream.samples), np.uint32)[faults.mask]
    times = _column(stream.samples.time, len(stream.samples))[faults.mask]
    return ClassifiedFaults(faults.addresses, tids, times, result)


def _kernel_site(ip: int, ksyms: KernelSymbols, meta: dict) -> str:
    """A kernel-mode fault's instruction, named as count_summary.kernel_instruction names it: from `ksyms` when
    they are this boot's (the recording's _text), else why it is not named."""
    same_boot = (meta.get("kernel") or {}).get("text_base") in (None, ksyms.text_base())
    found = ksyms.lookup(ip) if ksyms.usable and same_boot else None
    return kernel_instruction(found, "no symbols: " + ("run as root" if not ksyms.usable else "another boot's kernel"))


def _class_summary(summary: TraceSummary, result: Classified, addresses: np.ndarray, fault_ips: np.ndarray,
                   maps: list[Mapping], top: int, times: np.ndarray, ksyms: KernelSymbols | None,
                   meta: dict) -> None:
    """The classes counted, and the faults broken down by class × mapping × call site (the mapping in force at
    each fault's time; a kernel-mode fault's site named in the kernel where `ksyms` are given)."""
    ordered, idx = mapping_index(addresses, maps, times)
    index = result.index if result.index is not None else np.array([CLASS_LIST.index(c) for c in result.classes])
    counts = np.bincount(index, minlength=len(CLASS_LIST)) if len(index) else np.zeros(len(CLASS_LIST), dtype=np.int64)
    summary.by_class = [(CLASS_LIST[i].value, int(counts[i]), HOW[CLASS_LIST[i]])
                        for i in np.argsort(-counts, kind="stable").tolist() if counts[i]]
    label_of = [label_for(m) for m in ordered] + [label_for(None)]   # idx -1: no mapping, named as by_mapping names it
    # class × mapping × faulting instruction, counted in bulk. By the mapping's label, not the mapping: a stack
    # that grows is a new mapping at each fault (its start moved), and its growth faults were as many rows of one
    # fault each, all "[stack]" at one instruction
    labels = sorted(set(label_of))
    index_of = {label: i for i, label in enumerate(labels)}
    label_id = np.array([index_of[label] for label in label_of], dtype=np.int64)[idx]
    ips, ip_index = np.unique(fault_ips, return_inverse=True)
    key = (ip_index.astype(np.int64) << 32) | (label_id << 8) | index.astype(np.int64)
    uniq, n = np.unique(key, return_counts=True)
    top_rows = np.argsort(-n, kind="stable")[:top]
    combos = [((CLASS_LIST[int(uniq[r] & 0xFF)].value, labels[int(uniq[r] >> 8 & 0xFFFFFF)],
                int(ips[int(uniq[r] >> 32)])), int(n[r])) for r in top_rows.tolist()]
    starts = [o.start for o in ordered]
    for (cls, label, ip), count in combos:
        i = bisect.bisect_right(starts, ip) - 1
        m = ordered[i] if 0 <= i < len(ordered) and ordered[i].contains(ip) else None
        if m is not None and m.path.startswith("/"):
            site = resolve_mapping(ip, m).describe()
        elif m is None and ksyms is not None and ip >= user_address_limit(meta):
            site = _kernel_site(ip, ksyms, meta)
        else:
            site = f"0x{ip:x}"
        summary.class_breakdown.append((cls, label, site, count))
    summary.notes += result.notes


def _classify(stream: Stream, meta: dict, ids: dict[str, int], event_type: np.ndarray, fault_mask: np.ndarray,
              alloc_mask: np.ndarray, addresses: np.ndarray, codes: np.ndarray, maps: list[Mapping],
              ksyms: KernelSymbols | None, alloc_chains: tuple[list[list[int]], np.ndarray] | None = None) -> Classified:
    """Every fault's class (journey.fault_classes), in stream order. `alloc_chains`: the allocations' distinct call
    chains and which is each one's (records.distinct_callchains), when the caller has them already."""
    s = stream.samples
    n = len(s)
    add_mask = event_type == ids.get(CACHE_ADD_EVENT, -1)
    sig_mask = event_type == ids.get("signal:signal_generate", -1)
    kind = np.full(n, -1, dtype=np.int64)
    kind[fault_mask], kind[alloc_mask], kind[add_mask], kind[sig_mask] = FAULT, ALLOC, CACHE_ADD, SIGNAL
    keep = kind >= 0
    first = np.zeros(n, dtype=np.uint64)
    second = np.zeros(n, dtype=np.uint64)
    inode = np.zeros(n, dtype=np.uint64)
    first[fault_mask], second[fault_mask] = addresses, codes
    if alloc_mask.any():
        first[alloc_mask] = field_values(stream, meta, "kmem:mm_page_alloc", "order", alloc_mask)
        second[alloc_mask] = field_values(stream, meta, "kmem:mm_page_alloc", "gfp_flags", alloc_mask)
    if add_mask.any():
        # which file page was added, and how many with it (a large folio): compared with the fault's own page
        first[add_mask] = field_values(stream, meta, CACHE_ADD_EVENT, "index", add_mask)
        inode[add_mask] = field_values(stream, meta, CACHE_ADD_EVENT, "i_ino", add_mask)
        if "order" in meta["events"][str(ids[CACHE_ADD_EVENT])]["fields"]:
            second[add_mask] = field_values(stream, meta, CACHE_ADD_EVENT, "order", add_mask)
    if sig_mask.any():
        first[sig_mask] = field_values(stream, meta, "signal:signal_generate", "sig", sig_mask).astype(np.uint64)
        second[sig_mask] = field_values(stream, meta, "signal:signal_generate", "code", sig_mask).astype(np.uint64)
    chain_class = None
    if ksyms is not None and s.callchain_offset is not None:
        chain_class = np.full(n, -1, dtype=np.int64)
        allocs = np.nonzero(alloc_mask)[0]
        chains, which = alloc_chains or distinct_callchains(stream.data, s, allocs)
        cache: dict[tuple, int] = {}
        hits = []
        for chain in chains:   # each distinct chain once, not each allocation
            kernel, _user = split_callchain(chain)
            key = tuple(kernel)
            if key not in cache:
                names = [(ksyms.lookup(a) or ("?", 0))[0] for a in kernel]
                hit = -2 if not any(f in names for f in FAULT_ENTRY) else -1
                for j, (fn, _cls) in enumerate(CHAIN_CLASSES):
                    if hit == -1 and any(name.startswith(fn) for name in names):
                        hit = j
                cache[key] = hit
            hits.append(cache[key])
        chain_class[allocs] = np.array(hits, dtype=np.int64)[which] if hits else -1
    events = FaultEvents(kind[keep], _column(s.tid, n, np.uint32)[keep].astype(np.int64),
                         _column(s.time, n)[keep], first[keep], second[keep],
                         chain_class[keep] if chain_class is not None else None, inode[keep])
    ordered, idx = mapping_index(addresses, maps, _column(s.time, n)[fault_mask])
    stacks = [m.start for m in ordered if m.path == "[stack]"]
    stack_start = max(stacks) if stacks else -1
    per_map_anon = np.array([not m.path.startswith("/") or m.path == "//anon" for m in ordered] + [True], dtype=bool)
    per_map_private = np.array([not m.shared for m in ordered] + [True], dtype=bool)
    per_map_stack = np.array([stack_start if m.path == "[stack]" else -1 for m in ordered] + [-1], dtype=np.int64)
    per_map_special = np.array([m.path in SPECIAL_MAPPINGS for m in ordered] + [False], dtype=bool)
    # the faulting page's index in its file: (offset of the mapping + address − start) / page size
    per_map_base = np.array([m.pgoff - m.start if m.path.startswith("/") else -1 for m in ordered] + [-1],
                            dtype=np.int64)
    base = per_map_base[idx]
    file_index = np.where(base != -1, (addresses.astype(np.int64) + base) >> 12, -1)
    per_map_inode = np.array([m.inode for m in ordered] + [0], dtype=np.int64)
    kinds = MappingColumns(idx >= 0, per_map_anon[idx], per_map_private[idx], per_map_stack[idx], per_map_special[idx],
                           file_index, per_map_inode[idx])
    return classify_faults(events, kinds)


def lost_events(stream: Stream, meta: dict, ids: dict[str, int], tier: str, complete: bool) -> tuple[int | None, str]:
    """(events the kernel dropped, how that is known) — None when it cannot be known.

    The kernel counts every firing of an event (read(2) of its counter at the end, kept in the
    metadata); each firing is a sample, so counted − received is what was dropped, including drops
    after the last PERF_RECORD_LOST. Without those counts (a partial recording, an old kernel),
    the PERF_RECORD_LOST totals are only a lower bound.
    """
    counts = meta.get("event_counts")
    lost_records = stream.lost
    if not isinstance(counts, dict) or not counts:
        why = "the recording is partial" if not complete else "the kernel's event counts were not read"
        if lost_records:
            return None, f"at least {lost_records:,} (PERF_RECORD_LOST); the exact number is unknown: {why}"
        return None, f"unknown: {why}, and no PERF_RECORD_LOST record was seen"
    s = stream.samples
    received: dict[str, int] = {}
    for name in counts:
        if tier == "perf":
            received[name] = int(np.sum(s.event_type == ids.get(name, -1))) if s.event_type is not None else 0
        else:
            received[name] = len(s)
    dropped = {name: int(n) - received[name] for name, n in counts.items() if isinstance(n, int)}
    if any(d < 0 for d in dropped.values()):
        return None, ("unknown: the kernel counted fewer events than were received (a child still ran when "
                      "tracing stopped, so its counts were never added)")
    total = sum(dropped.values())
    detail = ", ".join(f"{name}: {counts[name]:,} fired, {received[name]:,} received" for name in counts)
    return max(total, lost_records), f"the kernel's event counts against the samples received ({detail})"


def _kernel_paths(chains: list[list[int]], which: np.ndarray, ksyms: KernelSymbols, top: int) -> list[tuple[str, int]]:
    """The most frequent kernel paths of the samples whose distinct call chains are `chains` (`which`: each sample's
    index in it), named outermost first from the entry function on."""
    raw_counts: Counter[tuple[int, ...]] = Counter()
    for chain, n in zip(chains, np.bincount(which, minlength=len(chains)).tolist()):
        kernel, _user = split_callchain(chain)
        raw_counts[tuple(kernel)] += n
    named: Counter[str] = Counter()
    for kernel_chain, n in raw_counts.items():
        funcs = [ksyms.describe(ip).split("+")[0] for ip in kernel_chain]
        funcs.reverse()  # outermost first
        for entry in ENTRY_FUNCS:
            if entry in funcs:
                funcs = funcs[funcs.index(entry):]
        named[" → ".join(funcs)] += n
    return named.most_common(top)


def recording_columns(rec: Recording) -> tuple[dict[str, np.ndarray], list[str], dict[str, dict[str, np.ndarray]], dict[int, str]]:
    """Every sample of a recording, in time order: its columns, event names, decoded fields and thread names."""
    meta = rec.meta
    stream = parse_stream(rec.data, meta["sample_type"] | (32 if meta.get("callchain") else 0))
    s = stream.samples
    if meta.get("tier", "perf") == "perf":
        ids = _event_ids(meta)
        names = sorted(ids, key=lambda n: ids[n])
        event_type = _column(s.event_type, len(s), np.uint16)
        event = np.searchsorted(np.array([ids[n] for n in names]), event_type)
        fields = {}
        for name in names:
            mask = event_type == ids[name]
            spec = meta["events"][str(ids[name])]["fields"]
            fields[name] = {f: field_values(stream, meta, name, f, mask) for f, (_o, size, _s) in spec.items()
                            if not f.startswith("common_") and size <= 8}
    else:
        names = ["page-faults"]
        event = np.zeros(len(s), dtype=np.int64)
        fields = {"page-faults": {"address": _column(s.addr, len(s)), "ip": s.ip}}
    columns = {"time": s.time, "pid": s.pid, "tid": s.tid, "cpu": s.cpu, "event": event, "ip": s.ip}
    return columns, names, fields, dict(stream.comms)


def fault_labels(rec: Recording, ksyms: KernelSymbols | None = None) -> dict[tuple[int, int, int], tuple[str, str]]:
    """Each fault of a perf-tier recording, keyed by (thread, time, address): its class and the mapping it hit,
    as the summary names them ({} for a recording of another tier, which has no classes)."""
    if rec.meta.get("tier", "perf") != "perf":
        return {}
    faults = classify_recording(rec, ksyms)
    stream = parse_stream(rec.data, rec.meta["sample_type"] | (32 if rec.meta.get("callchain") else 0),
                          in_time_order=False, columns=frozenset({"tid", "time"}))
    ordered, idx = mapping_index(faults.addresses, mappings_of(rec.meta, stream), faults.times)
    label_of = [label_for(m) for m in ordered] + [label_for(None)]   # idx -1: no mapping, named as by_mapping names it
    classes = faults.result.classes
    return {(tid, time, address): (classes[i].value, label_of[idx[i]])
            for i, (tid, time, address) in enumerate(zip(faults.tids.tolist(), faults.times.tolist(),
                                                         faults.addresses.tolist()))}
